"""The worker's socket loop (Paranoid Pirate): register, compute in a thread while the
parameters stream in, send the gradient's pieces as they are final, push, heartbeat, reconnect
with back-off when the coordinator goes silent. The math lives in compute.py."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import json
import os
import signal
import socket as pysocket
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

import zmq

from protocol import DEFAULT_MAX_MESSAGE_BYTES, HEARTBEAT_S, LIVENESS_S, Message
from protocol.transport import (EndpointError, RateLimitedLog, SendBuffers, connect_dealer, log_line, peak_rss_mb,
                                poll, receive, send)
from protocol.security import HandshakeWatch
from .compute import IncomingParams, WorkAborted, WorkerCompute


@dataclass
class Job:
    """One `work` being computed: its parameters coming in, its gradient buffer going out."""
    future: Future
    incoming: IncomingParams
    grad_out: np.ndarray
    received_at: float
    trackers: list = field(default_factory=list)    # sends of views of grad_out

    def abandon(self) -> None:
        self.future.cancel()            # not started: never runs
        self.incoming.abort()           # waiting for parameters: gives up


def job_key(message: Message) -> tuple:
    """What a `work` and its `params` (and what the worker sends back) name alike."""
    return message["token"], message["step"], tuple(message["chunks"])


class Worker:
    def __init__(self, endpoint: str, *, name: str | None = None, liveness_s: float = LIVENESS_S,
                 backoff_initial_s: float = 0.25, backoff_max_s: float = 5.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, curve_client=None, log=log_line,
                 trace: str | None = None):
        self.endpoint = endpoint
        self.name = name or f"{pysocket.gethostname()}:{os.getpid()}"
        self.liveness_s = liveness_s
        self.heartbeat_s = HEARTBEAT_S
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.max_message_bytes = max_message_bytes
        self.curve_client = curve_client
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
        """One connection's life. Returns "stop", "lost" (never welcomed), "welcomed" (lost
        later) or "refused" (the coordinator refused this worker's CurveZMQ key, or cuts the
        parameters differently)."""
        socket = connect_dealer(self.context, self.endpoint, self.curve_client)
        handshakes = HandshakeWatch(socket) if self.curve_client else None
        token, welcomed = None, False
        jobs: dict[tuple, Job] = {}         # (token, step, chunks) -> its job
        latest_step = -1        # work for an older step is obsolete: the coordinator has moved on
        last_heard = last_sent = time.monotonic()

        def transmit(message: Message) -> zmq.MessageTracker | None:
            nonlocal last_sent
            tracker = send(socket, message, track=message.cmd == "grad")
            last_sent = time.monotonic()
            return tracker

        transmit(Message("register", {"name": self.name}))
        try:
            while not self.stopping:
                ready = poll([socket, self.wake_read], self.heartbeat_s / 2)
                now = time.monotonic()
                refusal = handshakes.refusal() if handshakes else None
                if refusal:
                    self.log(f"error: worker {self.name}: {refusal}")
                    return "refused"
                if self.wake_read in ready:
                    os.read(self.wake_read, 4096)
                # finished jobs first: everything they emitted is in the outbox by now
                finished = [key for key, job in jobs.items() if job.future.done()]
                while self.outbox:
                    key, message = self.outbox.popleft()
                    if message["token"] == token and message["step"] >= latest_step:   # else fenced or moot
                        tracker = transmit(message)
                        if key in jobs and tracker is not None:
                            jobs[key].trackers.append(tracker)
                        if message.cmd == "push":
                            self.steps_done += 1
                            self._trace(message, jobs[key], now)
                for key in finished:
                    job = jobs.pop(key)
                    self._finish(job)
                    if job.incoming.stalled and key[0] == token:    # its pieces were lost: start afresh
                        self.reject_log(f"worker {self.name}: the parameters of step {key[1]} stopped "
                                        f"coming; registering again")
                        token = None
                        transmit(Message("register", {"name": self.name}))
                while socket in ready and socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    _, message, _ = receive(socket, False, self.compute.dims if self.compute else None,
                                            self.max_message_bytes, self.reject_log)
                    if message is None:
                        continue
                    last_heard = now
                    cmd = message.cmd
                    if cmd == "welcome":
                        self._prepare(message["config"], message["vocab"])
                        if message["pieces"] != self.compute.dims["pieces"]:
                            self.log(f"error: worker {self.name}: the coordinator cuts the parameters into "
                                     f"pieces of {message['pieces']}, this worker into "
                                     f"{self.compute.dims['pieces']}; run the same version on both")
                            return "refused"
                        token, welcomed = message["token"], True
                        self.heartbeat_s, self.liveness_s = message["heartbeat_s"], message["liveness_s"]
                        self.log(f"worker {self.name}: registered with {self.endpoint}")
                    elif cmd == "work" and token is not None and message["token"] == token:
                        latest_step = max(latest_step, message["step"])
                        for (job_token, job_step, _), job in jobs.items():
                            if job_token != token or job_step < latest_step:
                                job.abandon()   # moot: an older registration's, or the coordinator moved on
                        key = job_key(message)
                        if key not in jobs:
                            jobs[key] = self._submit(message, now)
                    elif cmd == "params" and token is not None and message["token"] == token:
                        job = jobs.get(job_key(message))
                        problem = job.incoming.put(message["piece"], message.arrays["params"]) if job \
                            else "no such work here"
                        if problem:
                            self.reject_log(f"worker {self.name}: dropped parameters for step "
                                            f"{message['step']}: {problem}")
                    elif cmd == "reject":
                        refused = message["refers_to"]
                        self.reject_log(f"worker {self.name}: coordinator refused {refused['cmd'] or 'a message'}"
                                        f" for step {refused['step']}: {message['reason']}")
                        # once per token: a reject naming an older token is history
                        if message["reregister"] and token is not None and refused["token"] == token:
                            token = None
                            transmit(Message("register", {"name": self.name}))
                    elif cmd == "stop":
                        self.log(f"worker {self.name}: told to stop ({message['reason']}) after "
                                 f"{self.steps_done} pushes; peak RSS {peak_rss_mb():.0f} MB")
                        return "stop"
                if now - last_heard > self.liveness_s:
                    return "welcomed" if welcomed else "lost"
                if token is not None and now - last_sent >= self.heartbeat_s:
                    transmit(Message("heartbeat", {"token": token}))
            if token is not None:
                transmit(Message("bye", {"token": token}))
            return "stop"
        finally:
            for job in jobs.values():
                job.abandon()       # nothing waits for pieces this connection will never bring
            self.outbox.clear()
            if handshakes:
                handshakes.close()
            socket.close(linger=200 if self.stopping else 0)

    def _finish(self, job: Job) -> None:
        """A job's end: its gradient buffer is reused once ZeroMQ has sent every view of it."""
        self.grad_buffers.retire(job.grad_out, job.trackers)
        if job.future.cancelled():
            return
        error = job.future.exception()
        if isinstance(error, (ValueError, FloatingPointError)):
            self.reject_log(f"worker {self.name}: could not compute the work: {error}")
        elif error is not None and not isinstance(error, WorkAborted):
            raise error

    def _trace(self, push: Message, job: Job, computed: float) -> None:
        """received: the work arrived; waited_s: computing waited for parameter pieces."""
        if self.trace:
            self.trace.write(json.dumps({"step": push["step"], "chunks": push["chunks"],
                                         "received": job.received_at, "waited_s": job.incoming.waited_s,
                                         "computed": computed, "compute_s": push["compute_s"]}) + "\n")
            self.trace.flush()

    def _prepare(self, config: dict, vocab: str) -> None:
        key = (tuple(sorted(config.items())), vocab)
        if key != self.compute_key:
            self.compute, self.compute_key = WorkerCompute(config, vocab), key

    def _submit(self, work: Message, now: float) -> Job:
        key = job_key(work)
        grad_out = self.grad_buffers.take((self.compute.layout.total,), self.compute.dtype)
        incoming = self.compute.incoming(patience_s=self.liveness_s)

        def emit(message: Message) -> None:     # from the compute thread, in order
            self.outbox.append((key, message))
            self._wake()

        future = self.executor.submit(self.compute.compute, work, incoming, emit, grad_out)
        future.add_done_callback(self._wake)
        return Job(future, incoming, grad_out, now)

    def _wake(self, _future=None) -> None:
        """Runs in the compute thread; after shutdown the pipe may be closed, which is fine."""
        try:
            os.write(self.wake_write, b".")
        except OSError:
            pass
