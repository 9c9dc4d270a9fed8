"""What the coordinator does with each message it receives (SPEC.md 4, 5.5): welcome a worker,
answer a pull, take a heartbeat, a gradient piece, a push or a bye; refuse the rest, counting a
worker's refused pushes until it is stopped."""
from __future__ import annotations

import time

from model.training import Contribution
from protocol import Message
from protocol.checks import reference_of
from protocol.schema import MAX_REFUSED_PUSHES, ProtocolError
from protocol.transport import relay_endpoint_problem
from .audit import Auditor
from .sender import Sender
from .server import ParameterServer
from .step import Outcome


def reference_to(message: Message) -> dict:
    """The `refers_to` of a `reject` that refuses this decoded message (SPEC.md, section 4)."""
    return reference_of({"cmd": message.cmd, **message.fields})


class Intake:
    def __init__(self, server: ParameterServer, sender: Sender, auditor: Auditor, pieces: list[int],
                 heartbeat_s: float, liveness_s: float, log, reject_log):
        self.server, self.sender, self.auditor = server, sender, auditor
        self.pieces = pieces            # the sizes the parameter vector travels in (SPEC.md 4.4)
        self.heartbeat_s, self.liveness_s = heartbeat_s, liveness_s
        self.log, self.reject_log = log, reject_log

    def handle(self, identity: bytes, message: Message) -> None:
        cmd, server = message.cmd, self.server
        if cmd == "register":
            if server.roster.barred(identity, message["name"]):
                self.reject_log(f"refused the registration of {message['name']!r}: an audit found it wrong")
                self.sender.send(identity, Message("stop", {"reason": "an audit found this worker's results wrong; "
                                                                      "it is refused for the rest of this run"}))
                return
            relay, problem = message["relay"], relay_endpoint_problem(message["relay"], message.peer)
            if relay and problem:           # welcomed all the same, but never chained
                self.reject_log(f"refused the relay of worker {message['name']!r}: {problem}")
                self.sender.reject(identity, f"{problem}; joining without a relay", False, reference_to(message))
                relay = ""
            self.welcome(identity, message["name"], relay, message["arithmetic"], message.key)
        elif cmd == "pull":
            self.sender.send(identity, self.model_message(), sends_params=True)
        elif cmd in ("heartbeat", "grad", "push", "bye", "sums"):
            token = message["token"]
            worker = server.workers.get(token)
            if worker is None or worker.identity != identity:     # a token is bound to its socket
                self.reject_log(f"refused {cmd} with unknown or stale token {token}")
                if cmd in ("heartbeat", "push"):       # a push answers for its pieces
                    self.sender.reject(identity, "unknown or expired token; register again", True,
                                       reference_to(message))
                return
            server.roster.heard_from(token, time.monotonic())
            self.release_audit_copy()
            key = (token, message.fields.get("step"), tuple(message.fields.get("chunks", ())))
            if cmd in ("grad", "push") and self.auditor.takes(server.in_flight, *key):
                self.audit_copy(identity, token, message)
            elif cmd == "sums":
                self.auditor.take_sums(token, message)
            elif cmd == "grad":
                kept = server.accept_piece(token, message["step"], tuple(message["chunks"]), message["piece"],
                                           message.arrays["grad"], message["prefix"])
                if kept.refusal:
                    self.reject_log(f"refused grad from worker {worker.name!r}: {kept.refusal}")
                    if kept.answer:
                        self.sender.reject(identity, kept.refusal, False, reference_to(message))
            elif cmd == "push":
                self.push(token, message)
            elif cmd == "bye":
                self.log(f"worker {worker.name!r} left")
                self.sender.dispatch(server.drop(token))
        else:
            self.reject_log(f"dropped {cmd!r}: not a command the coordinator accepts")

    def release_audit_copy(self) -> None:
        """An audit copy whose worker came to hold its group for the step: its pieces and push
        go to the step (SPEC.md 5.7), so that the step never waits on a result the audit took."""
        released = self.auditor.release(self.server.in_flight)
        if released is None:
            return
        token, step, group, pieces, push = released
        for piece, array in pieces:
            self.server.accept_piece(token, step, group, piece, array)
        if push is not None:
            self.server.accept_push(token, step, group, push, time.monotonic())

    def audit_copy(self, identity: bytes, token: int, message: Message) -> None:
        """A piece or the push of an audit copy (SPEC.md 5.7): kept for the audit, not the step."""
        key = (token, message["step"], tuple(message["chunks"]))
        if message.cmd == "grad":
            self.auditor.copy_piece(*key, message["piece"], message.arrays["grad"])
            return
        problem = self.auditor.copy_push(*key, Contribution(message["loss"], None, message.arrays["h"],
                                                            message.arrays["c"], message["compute_s"]))
        if problem:
            self.refuse(token, problem, reference_to(message), counts=True)
        else:
            self.sender.send(token, Message("ack", {"step": key[1], "chunks": list(key[2]), "status": "accepted"}))

    def welcome(self, identity: bytes, name: str, relay: str, arithmetic: str = "", key: str = "") -> None:
        server = self.server
        token = server.register(identity, name, time.monotonic(), relay, arithmetic, key)
        self.sender.send(token, Message("welcome", {
            "token": token, "config": server.state.config.to_dict(), "vocab": server.state.vocab,
            "heartbeat_s": self.heartbeat_s, "liveness_s": self.liveness_s, **self.layout_fields(),
            "pieces": self.pieces}))
        self.log(f"worker {name!r} registered (token {token}); {len(server.workers)} alive")
        self.sender.dispatch(server.orphaned_work())

    def model_message(self) -> Message:
        state = self.server.state
        return Message("model", {"step": state.step, "config": state.config.to_dict(), "vocab": state.vocab,
                                 **self.layout_fields()}, {"params": state.params})

    def layout_fields(self) -> dict:
        """How the flat parameter vector is cut (SPEC.md 4.1), for `welcome` and `model`."""
        layout = self.server.state.layout
        return {"names": list(layout.names), "shapes": [list(s) for s in layout.shapes]}

    def push(self, token: int, message: Message) -> None:
        group = tuple(message["chunks"])
        contribution = Contribution(message["loss"], None, message.arrays["h"], message.arrays["c"],
                                    message["compute_s"])
        result = self.server.accept_push(token, message["step"], group, contribution, time.monotonic())
        if result.status in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            self.server.workers[token].refused_in_a_row = 0
            self.sender.send(token, Message("ack", {"step": message["step"], "chunks": list(group),
                                                    "status": result.status.value}))
        else:
            self.refuse(token, result.reason, reference_to(message), counts=result.status == Outcome.REFUSED)

    def invalid(self, identity: bytes, error: ProtocolError) -> None:
        """A message that did not decode, from a registered socket: answered if it may be a push
        or a piece of one (which does not count: its push will be refused)."""
        worker = next((w for w in self.server.workers.values() if w.identity == identity), None)
        if worker is not None and error.reference["cmd"] in ("push", "grad", ""):
            self.refuse(worker.token, f"invalid message: {error}", error.reference,
                        counts=error.reference["cmd"] == "push")      # only refused pushes count

    def refuse(self, token: int, reason: str, reference: dict, counts: bool) -> None:
        worker = self.server.workers[token]
        self.reject_log(f"refused {reference['cmd'] or 'a message'} from worker {worker.name!r}: {reason}")
        self.sender.reject(worker.identity, reason, False, reference)
        if not counts:
            return
        worker.refused_in_a_row += 1
        if worker.refused_in_a_row >= MAX_REFUSED_PUSHES:
            self.log(f"worker {worker.name!r} dropped: {worker.refused_in_a_row} refused pushes in a "
                     f"row (last: {reason}); its chunks go to other workers")
            self.sender.send(token, Message("stop", {"reason": f"dropped after {worker.refused_in_a_row} "
                                                               f"refused pushes in a row (last: {reason}); "
                                                               f"fix or update the worker, then restart it"}))
            self.sender.dispatch(self.server.drop(token))
