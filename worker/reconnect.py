"""The worker process (Paranoid Pirate): connects, and reconnects with back-off when the
coordinator goes silent; one connection's life is session.py, the math compute.py."""
from __future__ import annotations

from dataclasses import dataclass
import os
import signal
import socket as pysocket
import time

import zmq

from protocol import DEFAULT_MAX_MESSAGE_BYTES, HEARTBEAT_S, LIVENESS_S
from protocol.transport import EndpointError, RateLimitedLog, log_line
from .compute import WorkerCompute
from .emulated import EmulatedCompute
from .session import Session


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker is told on its command line, for every connection."""
    endpoint: str
    name: str
    curve_client: object | None = None
    relaying: bool = True           # offer a relay endpoint (SPEC.md 4.5)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


class WorkerMath:
    """The computation for the run a coordinator describes in its `welcome`, kept across
    connections while the run stays the same. emulation: (compute times, dilation) for
    scripts/netbench.py's emulated workers (worker/emulated.py), else None: the real math."""

    def __init__(self, emulation: tuple[dict, float] | None = None):
        self.compute: WorkerCompute | None = None
        self.key = None
        self.emulation = emulation

    def prepare(self, config: dict, vocab: str) -> None:
        key = (tuple(sorted(config.items())), vocab)
        if key != self.key:
            self.compute = (WorkerCompute(config, vocab) if self.emulation is None
                            else EmulatedCompute(config, vocab, *self.emulation))
            self.key = key

    @property
    def dims(self) -> dict | None:
        return self.compute.dims if self.compute else None

    def problem_with(self, welcome) -> str | None:
        """Why this worker cannot compute the run a `welcome` describes, or None (then ready)."""
        try:
            self.prepare(welcome["config"], welcome["vocab"])
        except (ValueError, TypeError) as error:
            return f"the coordinator sent a run this worker cannot compute ({error})"
        if welcome["pieces"] != self.dims["pieces"]:
            return (f"the coordinator cuts the parameters into pieces of {welcome['pieces']}, this worker "
                    f"into {self.dims['pieces']}")
        return None


class Worker:
    def __init__(self, endpoint: str, *, name: str | None = None, liveness_s: float = LIVENESS_S,
                 backoff_initial_s: float = 0.25, backoff_max_s: float = 5.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, curve_client=None, log=log_line,
                 trace: str | None = None, relaying: bool = True, emulation: tuple | None = None):
        self.settings = WorkerSettings(endpoint, name or f"{pysocket.gethostname()}:{os.getpid()}",
                                       curve_client, relaying, max_message_bytes)
        self.heartbeat_s, self.liveness_s = HEARTBEAT_S, liveness_s     # until a coordinator's arrive
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.log = log
        self.reject_log = RateLimitedLog(log)
        self.context = zmq.Context()
        self.math = WorkerMath(emulation)
        self.stopping = None
        # scripts/netbench.py: per work, when it had arrived and when its result was ready
        self.trace = open(trace, "a", encoding="utf-8") if trace else None

    def request_stop(self, signum, _frame) -> None:
        self.stopping = signal.Signals(signum).name

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        backoff, endpoint, name = self.backoff_initial_s, self.settings.endpoint, self.settings.name
        self.log(f"worker {name}: connecting to the coordinator at {endpoint}")
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
                self.log(f"worker {name}: no answer from {endpoint} for {self.liveness_s:g}s; "
                         f"reconnecting in {backoff:g}s")
                self._sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            self.log(f"worker {name}: {self.stopping}, exiting")
            return 0
        finally:
            self.reject_log.flush()         # every drop is accounted for, the last window's too
            self.log(f"worker {name}: {self.reject_log.total} invalid or refused messages in this run")
            self.context.destroy(linger=0)
            if self.trace:
                self.trace.close()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _session(self) -> str:
        session = Session(self.settings, self.context, self.math, self.heartbeat_s, self.liveness_s,
                          log=self.log, reject_log=self.reject_log, stopping=lambda: self.stopping,
                          trace=self.trace)
        try:
            return session.run()
        finally:           # the coordinator's figures hold for the next connection too
            self.heartbeat_s, self.liveness_s = session.heartbeat_s, session.liveness_s
