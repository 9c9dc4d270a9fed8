"""The compute thread of one session: works run there one at a time (numpy releases the GIL, so
the socket loop keeps heartbeating), and what they emit comes back through an outbox, with a
pipe that wakes the loop."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
import os

from protocol import Message


class ComputeThread:
    def __init__(self):
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.outbox: deque[tuple[tuple, Message]] = deque()     # compute thread -> socket loop
        self.wake_read, self.wake_write = os.pipe()

    def submit(self, key: tuple, compute, *args) -> Future:
        """Runs compute(*args, emit) in the thread; each message it emits goes to the outbox
        under key, in order."""
        def emit(message: Message) -> None:
            self.outbox.append((key, message))
            self._wake()

        future = self.executor.submit(compute, *args[:2], emit, *args[2:])
        future.add_done_callback(self._wake)
        return future

    def emitted(self) -> list[tuple[tuple, Message]]:
        """What the thread emitted since the last call, oldest first."""
        out = []
        while self.outbox:
            out.append(self.outbox.popleft())
        return out

    def woken(self) -> None:
        os.read(self.wake_read, 4096)

    def _wake(self, _future=None) -> None:
        """Runs in the compute thread; after close the pipe may be gone, which is fine."""
        try:
            os.write(self.wake_write, b".")
        except OSError:
            pass

    def close(self) -> None:
        """Waits for the work in progress (abandon it first: one waiting for parameters then ends
        at once), so that no late write reaches the pipe's file descriptors once reused."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.outbox.clear()
        os.close(self.wake_read)
        os.close(self.wake_write)
