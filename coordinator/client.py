"""Client side of `pull`: fetch the live parameters from a running coordinator."""
from __future__ import annotations

import time

import numpy as np
import zmq

from model.config import Config
from model.params import ParamLayout
from protocol import Message
from protocol.security import HandshakeWatch
from protocol.transport import RateLimitedLog, connect_dealer, poll, receive, send


class PullError(Exception):
    pass


def pull_model(endpoint: str, timeout_s: float = 10.0, curve_client=None) -> tuple[dict, np.ndarray]:
    """(meta, flat params) as the coordinator has them now; PullError if it does not answer."""
    context = zmq.Context()
    handshakes = HandshakeWatch(curve=curve_client is not None)
    try:
        socket = connect_dealer(context, endpoint, curve_client, handshakes.attach)
    except BaseException:
        handshakes.close()
        context.term()
        raise
    try:
        try:
            send(socket, Message("pull"), drop_if_busy=True)
        except zmq.Again:       # never blocks: a connection a failed handshake ended takes nothing; the loop says why
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            refusal = handshakes.refusal()
            if refusal:
                raise PullError(refusal)
            if poll([socket], min(0.1, deadline - time.monotonic())):
                _, message, _ = receive(socket, False, None, 2 ** 31, RateLimitedLog())
                if message is not None and message.cmd == "model":
                    return model_of(message, endpoint)
        raise PullError(f"no answer from a coordinator at {endpoint} within {timeout_s:g}s; "
                        f"is it running, and is the address right?")
    finally:
        handshakes.close()
        socket.close(linger=0)
        context.term()


def model_of(reply: Message, endpoint: str) -> tuple[dict, np.ndarray]:
    """(meta, flat params) of a `model` reply that describes a model this code can run: its config
    valid, its layout the one that config gives, its vector that layout's size. PullError if not,
    so that a wrong or hostile coordinator cannot crash the sampler or the exporter."""
    try:
        config = Config.from_dict(reply["config"])
    except (ValueError, TypeError) as error:
        raise PullError(f"the coordinator at {endpoint} sent a model this version cannot use ({error})") from None
    names, shapes, params = reply["names"], reply["shapes"], reply.arrays["params"]
    # the layout has more names than layers, so the message's own size bounds the work here
    layout = (ParamLayout.for_model(len(reply["vocab"]), config.layers, config.hidden)
              if reply["vocab"] and config.layers <= len(names) else None)
    if (layout is None or list(layout.names) != names or [list(s) for s in layout.shapes] != shapes
            or params.size != layout.total or params.dtype != np.dtype(config.dtype)):
        raise PullError(f"the coordinator at {endpoint} sent parameters that do not fit the model it "
                        f"describes; is it running this version?")
    meta = dict(config.to_dict(), vocab=reply["vocab"], step=reply["step"])
    return meta, params.copy()
