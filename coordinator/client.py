"""Client side of `pull`: fetch the live parameters from a running coordinator."""
from __future__ import annotations

import time

import numpy as np
import zmq

from protocol import Message
from protocol.security import HandshakeWatch
from protocol.transport import RateLimitedLog, connect_dealer, poll, receive, send


class PullError(Exception):
    pass


def pull_model(endpoint: str, timeout_s: float = 10.0, curve_client=None) -> tuple[dict, np.ndarray]:
    """(meta, flat params) as the coordinator has them now; PullError if it does not answer."""
    context = zmq.Context()
    try:
        socket = connect_dealer(context, endpoint, curve_client)
    except BaseException:
        context.term()
        raise
    handshakes = HandshakeWatch(socket) if curve_client else None
    try:
        send(socket, Message("pull"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            refusal = handshakes.refusal() if handshakes else None
            if refusal:
                raise PullError(refusal)
            if poll([socket], min(0.1, deadline - time.monotonic())):
                _, message, _ = receive(socket, False, None, 2 ** 31, RateLimitedLog())
                if message is not None and message.cmd == "model":
                    meta = dict(message["config"], vocab=message["vocab"], step=message["step"])
                    return meta, message.arrays["params"].copy()
        raise PullError(f"no answer from a coordinator at {endpoint} within {timeout_s:g}s; "
                        f"is it running, and is the address right?")
    finally:
        if handshakes:
            handshakes.close()
        socket.close(linger=0)
        context.term()
