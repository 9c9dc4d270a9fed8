"""The worker process (Paranoid Pirate): connects, and reconnects with back-off when the
coordinator goes silent; one connection's life is session.py, the math compute.py."""
from __future__ import annotations

from collections import deque
import os
import signal
import socket as pysocket
import time
from concurrent.futures import Future, ThreadPoolExecutor

import zmq

from protocol import DEFAULT_MAX_MESSAGE_BYTES, HEARTBEAT_S, LIVENESS_S, Message
from protocol.transport import EndpointError, RateLimitedLog, SendBuffers, log_line
from .compute import IncomingParams, ParamsWatch, WorkerCompute
from .session import Session, trace_line


class Worker:
    def __init__(self, endpoint: str, *, name: str | None = None, liveness_s: float = LIVENESS_S,
                 backoff_initial_s: float = 0.25, backoff_max_s: float = 5.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, curve_client=None, log=log_line,
                 trace: str | None = None, relaying: bool = True):
        self.endpoint = endpoint
        self.name = name or f"{pysocket.gethostname()}:{os.getpid()}"
        self.liveness_s = liveness_s
        self.heartbeat_s = HEARTBEAT_S
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.max_message_bytes = max_message_bytes
        self.curve_client = curve_client
        self.relaying = relaying        # offer a relay endpoint (SPEC.md 4.5); never with CurveZMQ keys
        self.log = log
        self.reject_log = RateLimitedLog(log)
        self.context = zmq.Context()
        self.executor = ThreadPoolExecutor(max_workers=1)   # numpy releases the GIL: heartbeats go on
        self.wake_read, self.wake_write = os.pipe()
        self.compute: WorkerCompute | None = None
        self.compute_key = None
        self.stopping = None
        self.steps_done = 0
        self.grad_buffers = SendBuffers()     # gradients go out zero-copy; reused once sent
        self.outbox: deque[tuple[tuple, Message]] = deque()    # compute thread -> socket loop
        # scripts/netbench.py: per work, when it had arrived and when its result was ready
        self.trace = open(trace, "a", encoding="utf-8") if trace else None

    def request_stop(self, signum, _frame) -> None:
        self.stopping = signal.Signals(signum).name

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        backoff = self.backoff_initial_s
        self.log(f"worker {self.name}: connecting to the coordinator at {self.endpoint}")
        try:
            while not self.stopping:
                try:
                    outcome = self._session()
                except EndpointError as error:
                    self.log(f"error: {error}")
                    return 2
                if outcome == "stop":
                    return 0
                if outcome == "refused":
                    return 2
                if outcome == "welcomed":
                    backoff = self.backoff_initial_s
                if self.stopping:
                    break
                self.log(f"worker {self.name}: no answer from {self.endpoint} for {self.liveness_s:g}s; "
                         f"reconnecting in {backoff:g}s")
                self._sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            self.log(f"worker {self.name}: {self.stopping}, exiting")
            return 0
        finally:
            self.reject_log.flush()         # every drop is accounted for, the last window's too
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.context.destroy(linger=0)
            if self.trace:
                self.trace.close()
            os.close(self.wake_read)
            os.close(self.wake_write)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _session(self) -> str:
        return Session(self).run()

    # what a session asks of the worker, which outlives it -----------------------------------
    def prepare(self, config: dict, vocab: str) -> None:
        key = (tuple(sorted(config.items())), vocab)
        if key != self.compute_key:
            self.compute, self.compute_key = WorkerCompute(config, vocab), key

    @property
    def dims(self) -> dict | None:
        return self.compute.dims if self.compute else None

    @property
    def dtype(self):
        return self.compute.dtype

    @property
    def layout_total(self) -> int:
        return self.compute.layout.total

    def new_params(self) -> IncomingParams:
        return self.compute.incoming(patience_s=self.liveness_s)

    def submit(self, key: tuple, work: Message, incoming: ParamsWatch, grad_out, timings: dict) -> Future:
        def emit(message: Message) -> None:     # from the compute thread, in order
            self.outbox.append((key, message))
            self._wake()

        future = self.executor.submit(self.compute.compute, work, incoming, emit, grad_out, timings)
        future.add_done_callback(self._wake)
        return future

    def trace_push(self, push: Message, received: float, waited_s: float, computed: float) -> None:
        if self.trace:
            self.trace.write(trace_line(push, received, waited_s, computed) + "\n")
            self.trace.flush()

    def _wake(self, _future=None) -> None:
        """Runs in the compute thread; after shutdown the pipe may be closed, which is fine."""
        try:
            os.write(self.wake_write, b".")
        except OSError:
            pass
