"""Everything the coordinator sends (SPEC.md 4): to a worker by token or to a socket by identity,
a step's work with its parameter pieces, an abandoned chain's orders, rejects and stops."""
from __future__ import annotations

import time

import zmq

from protocol import Message
from protocol.transport import send
from .server import ParameterServer
from .chain import SendDirect
from .step import WorkItem


class Sender:
    def __init__(self, socket: zmq.Socket, server: ParameterServer):
        self.socket, self.server = socket, server
        self.param_sends: list[zmq.MessageTracker] = []    # sends of the current parameters

    def send(self, token_or_identity: int | bytes, message: Message, sends_params: bool = False) -> None:
        worker = self.server.workers.get(token_or_identity) if isinstance(token_or_identity, int) else None
        identity = worker.identity if worker else token_or_identity
        tracker = send(self.socket, message, identity, track=sends_params)
        if sends_params:
            self.param_sends.append(tracker)
        if worker:
            worker.last_sent = time.monotonic()

    def dispatch(self, items: list[WorkItem]) -> None:
        """Each item's `work`, then its parameters unless a relay chain brings them (SPEC.md 4.5);
        then what an abandoned chain asks for."""
        for item in items:
            out = self.server.work_out(item, time.monotonic())
            self.send(out.token, out.message)
            if out.sends_params:
                self.params(out.token)
        step = self.server.state.step
        for order in self.server.chain_watch.take_orders():
            if isinstance(order, SendDirect):
                self.send(order.token, Message("direct", {"step": step, "chunks": list(order.group)}))
            else:
                self.params(order.token)

    def params(self, token: int) -> None:
        step = self.server.state.step
        for piece, params in enumerate(self.server.param_pieces()):         # SPEC.md 4.4
            self.send(token, Message("params", {"step": step, "piece": piece}, {"params": params}),
                      sends_params=True)

    def reject(self, identity: bytes, reason: str, reregister: bool, reference: dict) -> None:
        send(self.socket, Message("reject", {"reason": reason, "reregister": reregister,
                                             "refers_to": reference}), identity)

    def heartbeats(self, now: float, interval_s: float) -> None:
        """A heartbeat to every worker this process has not sent anything for interval_s."""
        for worker in list(self.server.workers.values()):
            if now - worker.last_sent >= interval_s:
                self.send(worker.token, Message("heartbeat", {"token": worker.token}))

    def stop_all(self, reason: str) -> None:
        for worker in list(self.server.workers.values()):
            self.send(worker.token, Message("stop", {"reason": reason}))
