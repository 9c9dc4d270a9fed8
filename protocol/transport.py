"""The one module that owns ZeroMQ sockets: creation, sending, receiving, polling, logging drops."""
from __future__ import annotations

import resource
import sys
import time

import zmq

from .messages import DEFAULT_MAX_MESSAGE_BYTES, Message, ProtocolError, decode, encode


def log_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RateLimitedLog:
    """At most `burst` lines per `interval_s`; then one line saying how many were suppressed."""

    def __init__(self, log=log_line, burst: int = 20, interval_s: float = 10.0):
        self.log, self.burst, self.interval_s = log, burst, interval_s
        self.window_start, self.in_window, self.suppressed, self.total = 0.0, 0, 0, 0

    def __call__(self, text: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self.window_start >= self.interval_s:
            if self.suppressed:
                self.log(f"... {self.suppressed} similar lines suppressed in the last {self.interval_s:g}s")
            self.window_start, self.in_window, self.suppressed = now, 0, 0
        if self.in_window < self.burst:
            self.in_window += 1
            self.log(text)
        else:
            self.suppressed += 1

    def flush(self) -> None:
        """Reports what the current window suppressed, so every rejection is accounted for."""
        if self.suppressed:
            self.log(f"... {self.suppressed} similar lines suppressed in the last {self.interval_s:g}s")
            self.suppressed = 0


def bind_router(context: zmq.Context, endpoint: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                curve_server=None) -> tuple[zmq.Socket, str]:
    """Binds the coordinator's ROUTER; returns it and the endpoint actually bound (port * resolved)."""
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 1000)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)   # libzmq drops peers sending larger frames
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    if curve_server is not None:
        curve_server(socket)
    socket.bind(endpoint)
    return socket, socket.getsockopt_string(zmq.LAST_ENDPOINT)


def connect_dealer(context: zmq.Context, endpoint: str, curve_client=None) -> zmq.Socket:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RECONNECT_IVL, 100)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if curve_client is not None:
        curve_client(socket)
    socket.connect(endpoint)
    return socket


def send(socket: zmq.Socket, message: Message, identity: bytes | None = None,
         track: bool = False) -> zmq.MessageTracker | None:
    """Large arrays go zero-copy: the caller must not modify them until ZeroMQ is done with
    them. With track=True the returned tracker says when that is (its .done), so the caller
    can reuse the arrays' memory instead of allocating (and page-faulting) new megabytes."""
    frames = encode(message)
    tracker = None
    if track:
        frames = frames[:2] + [zmq.Frame(f, track=True) for f in frames[2:]]
        tracker = zmq.MessageTracker(*frames[2:])
    if identity is not None:
        frames = [identity, *frames]
    socket.send_multipart(frames, copy=False)
    return tracker


def receive(socket: zmq.Socket, routed: bool, dims: dict | None, max_message_bytes: int,
            reject_log) -> tuple[bytes | None, Message | None]:
    """Reads one multipart message without blocking. Returns (identity, message); message is
    None when what arrived was invalid (it is logged through reject_log and dropped)."""
    frames = socket.recv_multipart(copy=False)
    identity = None
    if routed:
        identity, frames = frames[0].bytes, frames[1:]
    try:
        return identity, decode([f.buffer for f in frames], dims, max_message_bytes)
    except ProtocolError as error:
        who = f" from peer {identity.hex()}" if identity else ""
        reject_log(f"dropped invalid message{who}: {error}")
        return identity, None


def poll(sockets, timeout_s: float) -> set:
    """The sockets (of those given) that have input, waiting at most timeout_s."""
    poller = zmq.Poller()
    for socket in sockets:
        poller.register(socket, zmq.POLLIN)
    return {socket for socket, _ in poller.poll(max(0.0, timeout_s) * 1000)}
