"""A worker's relay side (SPEC.md 4.5): its own ROUTER, where the worker before it in a chain
sends parameters and sums, and DEALERs to the relays of the workers after it."""
from __future__ import annotations

import zmq

from protocol import Message
from protocol.transport import bind_relay, connect_relay, local_address_toward, relay_queue, send


class Relay:
    def __init__(self, context: zmq.Context, coordinator: str, offer: bool, max_message_bytes: int, drop_log):
        """offer: bind a relay ROUTER on the address this host reaches the coordinator from (none
        for other transports); else the worker takes no part in chains."""
        self.context, self.drop_log = context, drop_log
        host = local_address_toward(coordinator) if offer else None
        self.socket, self.endpoint = bind_relay(context, host, max_message_bytes) if host else (None, "")
        self.peers: dict[str, zmq.Socket] = {}      # relay endpoint -> a DEALER to it
        self.queue = relay_queue(1)

    def size_for(self, pieces: int) -> None:
        """A run's parameters travel in `pieces`: each peer's queue holds a step of them."""
        if relay_queue(pieces) != self.queue:
            self.keep_only(set())
            self.queue = relay_queue(pieces)

    def send(self, endpoint: str, message: Message) -> zmq.MessageTracker | None:
        """To another worker's relay; None if it does not take it (not connected or not
        reading: the coordinator then abandons the chain)."""
        if endpoint not in self.peers:
            self.peers[endpoint] = connect_relay(self.context, endpoint, self.queue)
        try:
            return send(self.peers[endpoint], message, track=True, drop_if_busy=True)
        except zmq.Again:
            self.drop_log(f"relay peer {endpoint} does not take {message.cmd} for step {message['step']}; dropped")
            return None

    def keep_only(self, wanted: set[str]) -> None:
        """Connections no work uses go, with whatever they still queued."""
        for endpoint in [e for e in self.peers if e not in wanted]:
            self.peers.pop(endpoint).close(linger=0)

    def close(self) -> None:
        self.keep_only(set())
        if self.socket is not None:
            self.socket.close(linger=0)
