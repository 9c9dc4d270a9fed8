"""The coordinator's socket loop: a thin shell around ParameterServer that serves workers and,
as the training run's step source, gathers every chunk's contribution to a step."""
from __future__ import annotations

import json
import time

import numpy as np
import zmq

from model.corpus import Corpus
from model.run import Gathered
from model.training import Contribution, TrainState, shape_sizes
from protocol import HEARTBEAT_S, LIVENESS_S, Message
from protocol.messages import (DEFAULT_MAX_MESSAGE_BYTES, MAX_HEADER_BYTES, MAX_REFUSED_PUSHES, ProtocolError,
                               reference_of)
from protocol.transport import (RateLimitedLog, SendBuffers, bind_router, drain, log_line, peak_rss_mb,
                                poll, send)
from protocol.security import ServerHandshakeWatch
from .server import ParameterServer



def largest_message_in(dims: dict, chunks: int) -> int:
    """Bytes of the largest message a worker sends this run: a push of every chunk's states, or
    a gradient piece, with the largest header the protocol allows."""
    itemsize = np.dtype(dims["float"]).itemsize
    push = 2 * dims["L"] * chunks * dims["H"] * itemsize
    return max(push, max(dims["pieces"]) * itemsize) + MAX_HEADER_BYTES


def reference_to(message: Message) -> dict:
    """The `refers_to` of a `reject` that refuses this decoded message (SPEC.md, section 4)."""
    return reference_of({"cmd": message.cmd, **message.fields})


class Coordinator:
    def __init__(self, state: TrainState, corpus: Corpus, bind: str, *, heartbeat_s: float = HEARTBEAT_S,
                 liveness_s: float = LIVENESS_S, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 min_workers: int = 1, curve_server=None, log=log_line, trace: str | None = None):
        self.dims = shape_sizes(state.config, state.layout)
        needed = largest_message_in(self.dims, state.config.chunks)
        if max_message_bytes < needed:      # else every push would be dropped, and the run would hang
            raise ValueError(f"--max-message-mb {max_message_bytes / 2 ** 20:g} is below this run's largest "
                             f"message ({needed / 2 ** 20:.2f} MiB); raise it")
        self.server = ParameterServer(state, corpus, liveness_s, relaying=curve_server is None)
        self.heartbeat_s, self.liveness_s = heartbeat_s, liveness_s
        self.max_message_bytes = max_message_bytes
        self.log = log
        self.reject_log = RateLimitedLog(log)
        self.backup_log = RateLimitedLog(log, burst=5, interval_s=60.0)
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
        self.min_workers = min_workers      # before the first step, so the partition is reproducible
        self.waiting_logged = time.monotonic()     # "waiting for workers" only after a while alone
        self.buffers = SendBuffers()
        self.param_sends: list[zmq.MessageTracker] = []    # sends of the current parameters
        # scripts/netbench.py: per step, when its work went out and its last result came in
        self.trace = open(trace, "a", encoding="utf-8") if trace else None
        self.dispatched_at = 0.0
        self.handshakes = ServerHandshakeWatch(self.socket, curve=curve_server is not None)
        log(f"coordinator listening on {self.endpoint}")

    @property
    def state(self) -> TrainState:
        return self.server.state

    # the step source ------------------------------------------------------------------------
    def gather(self, state: TrainState, stopping) -> Gathered | None:
        """Serves until every group of state.step has arrived (or stopping() is true: None)."""
        while not stopping():
            if self.server.in_flight is None and len(self.server.workers) >= self.min_workers:
                self.min_workers = 1
                self.dispatched_at = time.monotonic()
                self._dispatch(self.server.start_step())
            # while a step is out, wake often enough to copy a late group to an idle worker
            ready = poll([self.socket], self.heartbeat_s / (20 if self.server.in_flight else 4))
            # a bounded batch, then housekeeping, however busy
            for identity, message, error in drain(self.socket, ready, True, self.dims,
                                                  self.max_message_bytes, self.reject_log):
                if message is not None:
                    self._handle(identity, message)
                elif error is not None:
                    self._refuse_invalid(identity, error)
                if self.server.in_flight and self.server.in_flight.complete:
                    return self._gathered(self.server.collect())
            self._housekeeping()
        return None

    def _gathered(self, contributions) -> Gathered:
        backups = self.server.take_backup_counts()
        if self.trace:
            self.trace.write(json.dumps({"step": self.state.step, "dispatched": self.dispatched_at,
                                         "gathered": time.monotonic()}) + "\n")
        return Gathered(contributions, {
            "workers": len(self.server.workers),
            "compute_s": round(max(c.compute_s for c in contributions.values()), 4),
            "backups_issued": backups.issued, "backups_won": backups.won, "backups_wasted": backups.wasted,
            "relayed": int(self.server.last_relayed)})

    def params_out(self, state: TrainState) -> np.ndarray:
        """A vector no pending send is reading; the current one retires with its sends."""
        out = self.buffers.take(state.params.shape, state.params.dtype)
        self.buffers.retire(state.params, self.param_sends)
        self.param_sends = []
        return out

    def close(self, reason: str) -> None:
        """Tells the workers why the run ended and closes the socket; a second call does nothing."""
        if self.socket.closed:
            return
        for worker in list(self.server.workers.values()):
            self._send(worker.token, Message("stop", {"reason": reason}))
        self.reject_log.flush()
        self.backup_log.flush()
        totals = self.server.total_backups
        self.log(f"{self.reject_log.total} invalid or refused messages in this run; backup copies: "
                 f"{totals.issued} issued, {totals.won} won, {totals.wasted} wasted; "
                 f"peak RSS {peak_rss_mb():.0f} MB")
        self.handshakes.close()
        self.socket.close(linger=1000)
        if self.trace:
            self.trace.close()
        if self.curve_server is not None:
            self.curve_server.stop()
        self.context.term()

    # sending --------------------------------------------------------------------------------
    def _send(self, token_or_identity, message: Message, sends_params: bool = False) -> None:
        worker = self.server.workers.get(token_or_identity) if isinstance(token_or_identity, int) else None
        identity = worker.identity if worker else token_or_identity
        tracker = send(self.socket, message, identity, track=sends_params)
        if sends_params:
            self.param_sends.append(tracker)
        if worker:
            worker.last_sent = time.monotonic()

    def _dispatch(self, items) -> None:
        for item in items:
            self.server.dispatched(item, time.monotonic())
            self._send(item.token, Message("work", self.server.work_fields(item), self.server.work_arrays(item)))
            if self.server.sends_params(item):      # else a relay chain brings them (SPEC.md 4.5)
                self._send_params(item.token)
        for order, token, *group in self.server.take_chain_orders():       # an abandoned chain's
            if order == "direct":
                self._send(token, Message("direct", {"step": self.state.step, "chunks": list(group[0])}))
            else:
                self._send_params(token)

    def _send_params(self, token: int) -> None:
        for piece, params in enumerate(self.server.param_pieces()):         # SPEC.md 4.4
            self._send(token, Message("params", {"step": self.state.step, "piece": piece}, {"params": params}),
                       sends_params=True)

    def _reject(self, identity: bytes, reason: str, reregister: bool, reference: dict) -> None:
        send(self.socket, Message("reject", {"reason": reason, "reregister": reregister,
                                             "refers_to": reference}), identity)

    def _welcome(self, identity: bytes, name: str, relay: str) -> None:
        token = self.server.register(identity, name, time.monotonic(), relay)
        state = self.state
        self._send(token, Message("welcome", {
            "token": token, "config": state.config.to_dict(), "vocab": state.vocab,
            "heartbeat_s": self.heartbeat_s, "liveness_s": self.liveness_s, **self._layout_fields(),
            "pieces": self.dims["pieces"]}))
        self.log(f"worker {name!r} registered (token {token}); {len(self.server.workers)} alive")
        self._dispatch(self.server.orphaned_work())

    def _model_message(self) -> Message:
        state = self.state
        return Message("model", {"step": state.step, "config": state.config.to_dict(), "vocab": state.vocab,
                                 **self._layout_fields()}, {"params": state.params})

    def _layout_fields(self) -> dict:
        """How the flat parameter vector is cut (SPEC.md 4.1), for `welcome` and `model`."""
        layout = self.state.layout
        return {"names": list(layout.names), "shapes": [list(s) for s in layout.shapes]}

    # receiving ------------------------------------------------------------------------------
    def _handle(self, identity: bytes, message: Message) -> None:
        cmd = message.cmd
        if cmd == "register":
            self._welcome(identity, message["name"], message["relay"])
        elif cmd == "pull":
            self._send(identity, self._model_message(), sends_params=True)
        elif cmd in ("heartbeat", "grad", "push", "bye"):
            token = message["token"]
            worker = self.server.workers.get(token)
            if worker is None or worker.identity != identity:     # a token is bound to its socket
                self.reject_log(f"refused {cmd} with unknown or stale token {token}")
                if cmd in ("heartbeat", "push"):       # a push answers for its pieces
                    self._reject(identity, "unknown or expired token; register again", True,
                                 reference_to(message))
                return
            self.server.heard_from(token, time.monotonic())
            if cmd == "grad":
                self.server.accept_piece(token, message["step"], tuple(message["chunks"]), message["piece"],
                                         message.arrays["grad"], message["prefix"])
            elif cmd == "push":
                self._handle_push(token, message)
            elif cmd == "bye":
                self.log(f"worker {worker.name!r} left")
                self._dispatch(self.server.drop(token))
        else:
            self.reject_log(f"dropped {cmd!r}: not a command the coordinator accepts")

    def _handle_push(self, token: int, message: Message) -> None:
        group = tuple(message["chunks"])
        contribution = Contribution(message["loss"], None, message.arrays["h"], message.arrays["c"],
                                    message["compute_s"])
        status, reason = self.server.accept_push(token, message["step"], group, contribution,
                                                 time.monotonic())
        if status in ("accepted", "duplicate"):
            self.server.workers[token].refused_in_a_row = 0
            self._send(token, Message("ack", {"step": message["step"], "chunks": list(group),
                                              "status": status}))
        else:
            self._refuse(token, reason, reference_to(message), counts=status == "refused")

    def _refuse_invalid(self, identity: bytes, error: ProtocolError) -> None:
        """A message that did not decode, from a registered socket: answered if it may be a push
        or a piece of one (which does not count: its push will be refused)."""
        worker = next((w for w in self.server.workers.values() if w.identity == identity), None)
        if worker is not None and error.reference["cmd"] in ("push", "grad", ""):
            self._refuse(worker.token, f"invalid message: {error}", error.reference,
                         counts=error.reference["cmd"] != "grad")

    def _refuse(self, token: int, reason: str, reference: dict, counts: bool) -> None:
        worker = self.server.workers[token]
        self.reject_log(f"refused {reference['cmd'] or 'a message'} from worker {worker.name!r}: {reason}")
        self._reject(worker.identity, reason, False, reference)
        if not counts:
            return
        worker.refused_in_a_row += 1
        if worker.refused_in_a_row >= MAX_REFUSED_PUSHES:
            self.log(f"worker {worker.name!r} dropped: {worker.refused_in_a_row} refused pushes in a "
                     f"row (last: {reason}); its chunks go to other workers")
            self._send(token, Message("stop", {"reason": f"dropped after {worker.refused_in_a_row} "
                                                         f"refused pushes in a row (last: {reason}); "
                                                         f"fix or update the worker, then restart it"}))
            self._dispatch(self.server.drop(token))

    def worker_command(self) -> str:
        """How to start a worker for this coordinator: an address others reach it at, and keys."""
        endpoint = self.endpoint.replace("tcp://0.0.0.0:", "tcp://THIS-HOST:").replace("tcp://[::]:", "tcp://THIS-HOST:")
        keys = " --curve-keys DIR --key-name worker" if self.curve_server is not None else ""
        return f"python -m worker --connect {endpoint}{keys}"

    # housekeeping ---------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        for line in self.handshakes.failures():
            self.reject_log(line)
        dead, work = self.server.reap(now)
        for token in dead:
            self.log(f"worker token {token} silent for over {self.liveness_s:g}s: declared dead, "
                     f"its chunks go to live workers")
        self.server.check_chain(now)
        self._dispatch(work)
        copies = self.server.backup_work(now)
        for item in copies:
            self.backup_log(f"step {item.step}: chunks {item.group[0]}-{item.group[-1]} are late; "
                            f"a backup copy goes to worker {self.server.workers[item.token].name!r}")
        self._dispatch(copies)
        for worker in list(self.server.workers.values()):
            if now - worker.last_sent >= self.heartbeat_s:
                self._send(worker.token, Message("heartbeat", {"token": worker.token}))
        if not self.server.workers and now - self.waiting_logged > 30:
            self.log(f"waiting for workers on {self.endpoint} (start one with `{self.worker_command()}`)")
            self.waiting_logged = now
