"""The one module that owns ZeroMQ sockets: creation, sending, receiving, polling, logging drops."""
from __future__ import annotations

import re
import resource
import socket as pysocket
import sys
import threading
import time

import numpy as np
import zmq

from .messages import decode, encode
from .schema import DEFAULT_MAX_MESSAGE_BYTES, Message, ProtocolError


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
        self.lock = threading.Lock()        # the ZAP thread reports refused handshakes here too

    def __call__(self, text: str) -> None:
        with self.lock:
            self._count(text)

    def _count(self, text: str) -> None:
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
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if self.suppressed:
            self.log(f"... {self.suppressed} similar lines suppressed in the last {self.interval_s:g}s")
            self.suppressed = 0


# Messages read from one socket per wake of a loop: a flood cannot keep a process from its
# heartbeats, its own sends and its other sockets (SPEC.md, section 7).
MAX_MESSAGES_PER_WAKE = 64


def drain(socket: zmq.Socket, ready: set, routed: bool, dims: dict | None, max_message_bytes: int,
          reject_log):
    """Yields (identity, message, error) for at most MAX_MESSAGES_PER_WAKE messages waiting on a
    socket that poll() found ready; the rest wait for the next wake."""
    if socket is None or socket not in ready:
        return
    for _ in range(MAX_MESSAGES_PER_WAKE):
        if not socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return
        yield receive(socket, routed, dims, max_message_bytes, reject_log)


class EndpointError(ValueError):
    """An endpoint that is malformed, or that cannot be bound or connected to; says which."""


ENDPOINT_FORM = "a valid endpoint looks like tcp://HOST:PORT or ipc://PATH"


def check_endpoint(action: str, endpoint: str, any_port: bool = False) -> None:
    """EndpointError for a tcp:// endpoint whose port is not 1-65535 (or *, where any_port):
    libzmq would wrap it modulo 65536, and Python's sockets raise OverflowError."""
    match = re.match(r"^tcp://.+:([^:\]]*)$", endpoint)
    if not match:
        return
    port = match.group(1)
    if port == "*" and any_port:
        return
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        allowed = "a number from 1 to 65535" + (" or *" if any_port else "")
        raise EndpointError(f"cannot {action} {endpoint}: port {port!r} must be {allowed}")


def _endpoint_error(action: str, endpoint: str, error: zmq.ZMQError) -> EndpointError:
    if error.errno == zmq.EADDRINUSE:
        return EndpointError(f"cannot {action} {endpoint}: the port is already in use (another "
                             f"coordinator?); stop that process or choose another port")
    if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
        return EndpointError(f"cannot {action} {endpoint!r}: {ENDPOINT_FORM}")
    return EndpointError(f"cannot {action} {endpoint}: {error.strerror}; {ENDPOINT_FORM}")


def bind_router(context: zmq.Context, endpoint: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                curve_server=None) -> tuple[zmq.Socket, str]:
    """Binds the coordinator's ROUTER; returns it and the endpoint actually bound (port * resolved)."""
    check_endpoint("listen on", endpoint, any_port=True)
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 1000)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)   # libzmq drops peers sending larger frames
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    if curve_server is not None:
        curve_server(socket)
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as error:
        socket.close(linger=0)
        raise _endpoint_error("listen on", endpoint, error) from None
    return socket, socket.getsockopt_string(zmq.LAST_ENDPOINT)


def connect_dealer(context: zmq.Context, endpoint: str, curve_client=None, before_connect=None) -> zmq.Socket:
    """A DEALER to the coordinator; curve_client and before_connect (e.g. a handshake monitor's
    attach) are applied to it before it connects."""
    check_endpoint("connect to", endpoint)
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RECONNECT_IVL, 100)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    for prepare in (curve_client, before_connect):
        if prepare is not None:
            prepare(socket)
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as error:
        socket.close(linger=0)
        raise _endpoint_error("connect to", endpoint, error) from None
    return socket


def relay_queue(pieces: int) -> int:
    """Messages queued for one relay peer before sends to it are dropped: a step's parameter
    and sum pieces, and a few more (32 for the default model's 14 pieces)."""
    return 2 * pieces + 4


def bind_relay(context: zmq.Context, host: str, max_message_bytes: int) -> tuple[zmq.Socket, str]:
    """A worker's relay ROUTER (SPEC.md 4.5) on a free port of host; returns it and its endpoint."""
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    try:
        port = socket.bind_to_random_port(f"tcp://{host}")
    except zmq.ZMQError as error:
        socket.close(linger=0)
        raise _endpoint_error("listen on", f"tcp://{host}:*", error) from None
    return socket, f"tcp://{host}:{port}"


def connect_relay(context: zmq.Context, endpoint: str, queue: int) -> zmq.Socket:
    """A DEALER to another worker's relay: messages queue while it connects, but a peer that
    does not take them fills a short queue of `queue` messages (relay_queue()), and then sends
    to it fail at once (send(drop_if_busy=True)) instead of queueing without end."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, queue)
    socket.connect(endpoint)
    return socket


def local_address_toward(endpoint: str) -> str | None:
    """The address this host uses to reach a tcp:// endpoint's host (no packet is sent): the
    one other workers can reach it at, on the same network. None for other transports."""
    match = re.match(r"^tcp://\[?([^\]]+?)\]?:(\d+)$", endpoint)
    if not match:
        return None
    try:
        with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as probe:
            probe.connect((match.group(1), int(match.group(2))))
            return probe.getsockname()[0]
    except OSError:
        return None


def send(socket: zmq.Socket, message: Message, identity: bytes | None = None,
         track: bool = False, drop_if_busy: bool = False) -> zmq.MessageTracker | None:
    """Large arrays go zero-copy: the caller must not modify them until ZeroMQ is done with
    them. With track=True the returned tracker says when that is (its .done), so the caller
    can reuse the arrays' memory instead of allocating (and page-faulting) new megabytes.
    drop_if_busy: a message that cannot be queued at once is dropped (zmq.Again is raised)."""
    frames = encode(message)
    tracker = None
    if track:
        frames = frames[:2] + [zmq.Frame(f, track=True) for f in frames[2:]]
        tracker = zmq.MessageTracker(*frames[2:])
    if identity is not None:
        frames = [identity, *frames]
    socket.send_multipart(frames, copy=False, flags=zmq.NOBLOCK if drop_if_busy else 0)
    return tracker


def receive(socket: zmq.Socket, routed: bool, dims: dict | None, max_message_bytes: int,
            reject_log) -> tuple[bytes | None, Message | None, ProtocolError | None]:
    """Reads one multipart message without blocking. Returns (identity, message, error):
    message is None when what arrived was invalid (logged through reject_log, and the error
    returned so that the caller may answer a registered sender)."""
    frames = socket.recv_multipart(copy=False)
    identity = None
    if routed:
        identity, frames = frames[0].bytes, frames[1:]
    try:
        message = decode([f.buffer for f in frames], dims, max_message_bytes)
        message.peer, message.key = _frame_property(frames[0], "Peer-Address"), _frame_property(frames[0], "User-Id")
        return identity, message, None
    except ProtocolError as error:
        who = f" from peer {identity.hex()}" if identity else ""
        reject_log(f"dropped invalid message{who}: {error}")
        return identity, None, error


class SendBuffers:
    """Arrays that go out zero-copy, reused once ZeroMQ is done with them.

    A zero-copy send lends ZeroMQ the array's memory until the message has left, so the array
    must not be written meanwhile. Whoever sends a large array every step writes into an array
    from `take` and, once it will not send that array again, hands it back with `retire` and
    the trackers of every send of it: `take` returns an array only when all of them are done.
    Nothing is written under a send, and no fresh megabytes are allocated (and page-faulted)
    each step."""

    def __init__(self, spare: int = 2):
        self.spare = spare
        self.retired: list[tuple[np.ndarray, list[zmq.MessageTracker]]] = []

    def take(self, shape, dtype) -> np.ndarray:
        shape, dtype = tuple(shape), np.dtype(dtype)
        for k, (array, trackers) in enumerate(self.retired):
            if array.shape == shape and array.dtype == dtype and all(t.done for t in trackers):
                del self.retired[k]
                return array
        return np.empty(shape, dtype)

    def retire(self, array: np.ndarray, trackers) -> None:
        self.retired.append((array, [t for t in trackers if t is not None]))
        free = [k for k, (_, trackers) in enumerate(self.retired) if all(t.done for t in trackers)]
        for k in reversed(free[:-self.spare] if len(free) > self.spare else []):
            del self.retired[k]     # more spares than anyone needs: let the memory go


def _frame_property(frame: zmq.Frame, name: str) -> str:
    """What libzmq says of a received message: its Peer-Address (TCP), its User-Id (the CurveZMQ
    public key ZAP admitted, in Z85), or "" where there is none."""
    try:
        return frame.get(name) or ""
    except (zmq.ZMQError, KeyError):
        return ""


def relay_endpoint_problem(endpoint: str, peer: str) -> str | None:
    """Why a worker's advertised relay endpoint is refused (SPEC.md 4, `register`), or None:
    it must be tcp://HOST:PORT on the very address its connection comes from, PORT 1-65535."""
    match = re.match(r"^tcp://\[?([^\]]+?)\]?:(\d+)$", endpoint)
    if not match:
        return f"relay endpoint {endpoint!r} is not tcp://HOST:PORT"
    host, port = match.group(1), int(match.group(2))
    if not 1 <= port <= 65535:
        return f"relay endpoint {endpoint} has port {port}, not 1-65535"
    if not peer or host != peer.removeprefix("::ffff:"):
        return (f"relay endpoint {endpoint} is not on the address this worker connects from "
                f"({peer or 'not a TCP connection'})")
    return None


def poll(sockets, timeout_s: float) -> set:
    """The sockets (of those given) that have input, waiting at most timeout_s."""
    poller = zmq.Poller()
    for socket in sockets:
        poller.register(socket, zmq.POLLIN)
    return {socket for socket, _ in poller.poll(max(0.0, timeout_s) * 1000)}
