"""The coordinator's socket loop: a thin shell around ParameterServer that serves workers and,
as the training run's step source, gathers every chunk's contribution to a step.

One distributed step, as gather() runs it (protocol/SPEC.md 4-5):
  start     server.start_step(): partition the chunks over the workers, plan the relay chain
  dispatch  sender.dispatch(): each `work`, then its `params` pieces (or the chain forwards them)
  intake    intake.handle(): `grad` pieces and `push`es (or a chain's sum) into server.accept_*
  watch     housekeeping(): dead workers' groups move, late groups get backup copies, a chain
            that does not carry is abandoned
  check     checks.settle(): the guard on the step's loss and gradient norm; an audited step waits for
            its copy and its chain's own gradients and is judged; a worker found wrong is barred
            and the run goes back (a Rewind instead of the step, SPEC.md 5.7)
  collect   server.collect(): the gradients in summing order, handed to the training run
            (model/step.py apply_step sums them, clips and applies RMSprop)
"""
from __future__ import annotations

import json
import time

import numpy as np
import zmq

from model.corpus import Corpus
from model.rewind import Rewind
from model.step import Gathered
from model.training import TrainState, shape_sizes
from protocol import HEARTBEAT_S, LIVENESS_S
from protocol.schema import DEFAULT_MAX_MESSAGE_BYTES, MAX_HEADER_BYTES
from protocol.security import ServerHandshakeWatch
from protocol.transport import RateLimitedLog, SendBuffers, bind_router, drain, log_line, peak_rss_mb, poll
from .audit import AUDIT_SHARE
from .checks import WAITING, StepChecks
from .intake import Intake
from .sender import Sender
from .server import ParameterServer
from .step import Collected


def largest_message_in(dims: dict, chunks: int) -> int:
    """Bytes of the largest message a worker sends this run: a push of every chunk's states, or
    a gradient piece, with the largest header the protocol allows."""
    itemsize = np.dtype(dims["float"]).itemsize
    push = 2 * dims["L"] * chunks * dims["H"] * itemsize
    return max(push, max(dims["pieces"]) * itemsize) + MAX_HEADER_BYTES


class Coordinator:
    def __init__(self, state: TrainState, corpus: Corpus, bind: str, *, heartbeat_s: float = HEARTBEAT_S,
                 liveness_s: float = LIVENESS_S, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 min_workers: int = 1, curve_server=None, relaying: bool = True, log=log_line,
                 trace: str | None = None, audit_share: float = AUDIT_SHARE, time_scale: float = 1.0):
        self.dims = shape_sizes(state.config, state.layout)
        needed = largest_message_in(self.dims, state.config.chunks)
        if max_message_bytes < needed:      # else every push would be dropped, and the run would hang
            raise ValueError(f"--max-message-mb {max_message_bytes / 2 ** 20:g} is below this run's largest "
                             f"message ({needed / 2 ** 20:.2f} MiB); raise it")
        self.server = ParameterServer(state, corpus, liveness_s, relaying=relaying, time_scale=time_scale)
        self.heartbeat_s, self.liveness_s = heartbeat_s, liveness_s
        self.max_message_bytes = max_message_bytes
        self.log = log
        self.reject_log = RateLimitedLog(log)
        self.backup_log = RateLimitedLog(log, burst=5, interval_s=60.0)     # backup copies, broken chains
        # two I/O threads: the parameters go to two workers at once instead of one after the other
        self.context = zmq.Context(io_threads=2)
        self.curve_server = curve_server
        if curve_server is not None:
            curve_server.on_refused = self.reject_log
        try:
            self.socket, self.endpoint = bind_router(self.context, bind, max_message_bytes, curve_server)
        except BaseException:
            self.context.destroy(linger=0)
            raise
        self.sender = Sender(self.socket, self.server)
        self.checks = StepChecks(self.server, self.sender, corpus, liveness_s, log, self.backup_log, audit_share)
        self.intake = Intake(self.server, self.sender, self.checks.auditor, self.dims["pieces"], heartbeat_s,
                             liveness_s, log, self.reject_log)
        # before the first step, and after going back, so the partition is reproducible
        self.min_workers = self.required_workers = min_workers
        self.waiting_logged = time.monotonic()     # "waiting for workers" only after a while alone
        self.buffers = SendBuffers()
        # scripts/netbench.py: per step, when its work went out and its last result came in
        self.trace = open(trace, "a", encoding="utf-8") if trace else None
        self.dispatched_at = 0.0
        self.handshakes = ServerHandshakeWatch(self.socket, curve=curve_server is not None)
        log(f"coordinator listening on {self.endpoint}")

    @property
    def state(self) -> TrainState:
        return self.server.state

    # the step source ------------------------------------------------------------------------
    def gather(self, state: TrainState, stopping) -> Gathered | Rewind | None:
        """Serves until every group of state.step has arrived and passed its checks (or a worker
        was found wrong: a Rewind; or stopping() is true: None)."""
        server = self.server
        while not stopping():
            if server.in_flight is None and len(server.workers) >= self.min_workers:
                self.min_workers = 1
                self.dispatched_at = time.monotonic()
                self.sender.dispatch(self.checks.plan(server.start_step()))     # start, dispatch
            # while a step is out, wake often enough to copy a late group to an idle worker
            ready = poll([self.socket], self.heartbeat_s / (20 if server.in_flight else 4))
            for identity, message, error in drain(self.socket, ready, True, self.dims,    # intake
                                                  self.max_message_bytes, self.reject_log):
                if message is not None:
                    self.intake.handle(identity, message)
                elif error is not None:
                    self.intake.invalid(identity, error)
                done = self.settled()                                        # check, collect
                if done is not None:
                    return done
            self.housekeeping()                                              # watch
            done = self.settled()
            if done is not None:
                return done
        return None

    def settled(self) -> Gathered | Rewind | None:
        """A complete step once its checks are done (coordinator/checks.py), else None."""
        if not (self.server.in_flight and self.server.in_flight.complete):
            return None
        checked = self.checks.settle(time.monotonic())
        if isinstance(checked, Rewind):
            self.min_workers = self.required_workers
            return checked
        if checked is WAITING:
            return None
        return self._gathered(self.server.collect(), checked)

    def _gathered(self, collected: Collected, audit) -> Gathered:
        backups = self.server.take_backup_counts()
        if self.trace:
            self.trace.write(json.dumps({"step": self.state.step, "dispatched": self.dispatched_at,
                                         "gathered": time.monotonic()}) + "\n")
        contributions = collected.contributions
        return Gathered(contributions, collected.gradients, {
            "workers": len(self.server.workers),
            "compute_s": round(max(c.compute_s for c in contributions.values()), 4),
            "backups_issued": backups.issued, "backups_won": backups.won, "backups_wasted": backups.wasted,
            "relayed": int(collected.relayed), "audited": audit.reason if audit else ""})

    def params_out(self, state: TrainState) -> np.ndarray:
        """A vector no pending send is reading; the current one retires with its sends."""
        out = self.buffers.take(state.params.shape, state.params.dtype)
        self.buffers.retire(state.params, self.sender.param_sends)
        self.sender.param_sends = []
        return out

    def close(self, reason: str) -> None:
        """Tells the workers why the run ended and closes the socket; a second call does nothing."""
        if self.socket.closed:
            return
        self.sender.stop_all(reason)
        for line in self.handshakes.failures():
            self.reject_log(line)
        self.reject_log.flush()
        self.backup_log.flush()
        totals = self.server.total_backups
        self.log(f"{self.reject_log.total} invalid or refused messages in this run; backup copies: "
                 f"{totals.issued} issued, {totals.won} won, {totals.wasted} wasted; {self.checks.summary()}; "
                 f"peak RSS {peak_rss_mb():.0f} MB")
        self.handshakes.close()
        self.socket.close(linger=1000)
        if self.trace:
            self.trace.close()
        if self.curve_server is not None:
            self.curve_server.stop()
        self.context.term()

    # between messages -----------------------------------------------------------------------
    def housekeeping(self) -> None:
        now, server = time.monotonic(), self.server
        for line in self.handshakes.failures():
            self.reject_log(line)
        dead, work = server.reap(now)
        for token in dead:
            self.log(f"worker token {token} silent for over {self.liveness_s:g}s: declared dead, "
                     f"its chunks go to live workers")
        server.check_chain(now)
        self.sender.dispatch(work)
        for line in server.chain_watch.take_events():
            self.backup_log(line)
        copies = server.backup_work(now)
        for item in copies:
            self.backup_log(f"step {item.step}: chunks {item.group[0]}-{item.group[-1]} are late; "
                            f"a backup copy goes to worker {server.workers[item.token].name!r}")
        self.sender.dispatch(copies)
        self.intake.release_audit_copy()        # a copy's worker may now hold its group for the step
        self.sender.heartbeats(now, self.heartbeat_s)
        if not server.workers and now - self.waiting_logged > 30:
            self.log(f"waiting for workers on {self.endpoint} (start one with `{self.worker_command()}`)")
            self.waiting_logged = now

    def worker_command(self) -> str:
        """How to start a worker for this coordinator: an address others reach it at, and keys."""
        endpoint = self.endpoint.replace("tcp://0.0.0.0:", "tcp://THIS-HOST:").replace("tcp://[::]:", "tcp://THIS-HOST:")
        keys = " --curve-keys DIR --key-name worker" if self.curve_server is not None else ""
        return f"python -m worker --connect {endpoint}{keys}"
