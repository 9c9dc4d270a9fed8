"""CurveZMQ for the cluster: key files, the coordinator's CURVE server with a ZAP authenticator
that admits only listed public keys, and the clients' CURVE settings.

Key folder layout (made by scripts/make_keys.py):
  DIR/coordinator.key, DIR/coordinator.key_secret      the coordinator's key pair
  DIR/clients/NAME.key, DIR/clients/NAME.key_secret    a worker's or client's key pair
  DIR/authorized/NAME.key                              public keys the coordinator admits
The coordinator needs coordinator.key_secret and authorized/; a client needs coordinator.key
and its own clients/NAME.key_secret. Without a ZAP handler libzmq would admit any CURVE
client, so the coordinator always runs one when keys are given."""
from __future__ import annotations

import os
import re
import shutil

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message


ZAP_DOMAIN = "charlstm"


class SecurityError(Exception):
    pass


def _load(path: str, need_secret: bool) -> tuple[bytes, bytes | None]:
    if not os.path.exists(path):
        raise SecurityError(f"key file {path} not found; create keys with scripts/make_keys.py")
    public, secret = zmq.auth.load_certificate(path)
    if need_secret and not secret:
        raise SecurityError(f"{path} holds no secret key")
    return public, secret


KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def create_keys(directory: str, clients: list[str]) -> tuple[list[str], list[str]]:
    """The coordinator's key pair and one pair per client, each authorised; a pair that exists
    is kept, never replaced (deployed keys stay valid). Folders are 0700, secrets 0600.
    Returns (client names created, client names kept)."""
    if not zmq.has("curve"):
        raise SecurityError("this libzmq was built without CURVE support")
    bad = [name for name in clients if not KEY_NAME.match(name) or ".." in name]
    if bad:
        raise SecurityError(f"client names must be letters, digits, '_', '.' or '-' (at most 64, no '..'): "
                            f"{', '.join(map(repr, bad))}")
    created, kept = [], []
    previous = os.umask(0o077)      # nothing is readable by others, not even for a moment
    try:
        for sub in ("", "clients", "authorized"):
            os.makedirs(os.path.join(directory, sub), exist_ok=True)
            os.chmod(os.path.join(directory, sub), 0o700)
        if not os.path.exists(os.path.join(directory, "coordinator.key_secret")):
            zmq.auth.create_certificates(directory, "coordinator")
        for name in clients:
            public = os.path.join(directory, "clients", f"{name}.key")
            if os.path.exists(os.path.join(directory, "clients", f"{name}.key_secret")):
                kept.append(name)
            else:
                public, _ = zmq.auth.create_certificates(os.path.join(directory, "clients"), name)
                created.append(name)
            authorized = os.path.join(directory, "authorized", f"{name}.key")
            if not os.path.exists(authorized):
                shutil.copyfile(public, authorized)
        for root, _, files in os.walk(directory):
            for file in files:
                if file.endswith(".key_secret"):
                    os.chmod(os.path.join(root, file), 0o600)
    finally:
        os.umask(previous)
    return created, kept


class CurveServer:
    """Apply to the coordinator's ROUTER before bind; call stop() when the socket is closed.
    Each refused handshake is reported to on_refused (one line, with the offered public key)."""

    def __init__(self, directory: str):
        self.public, self.secret = _load(os.path.join(directory, "coordinator.key_secret"), True)
        self.authorized = os.path.join(directory, "authorized")
        if not os.path.isdir(self.authorized) or not any(f.endswith(".key") for f in os.listdir(self.authorized)):
            raise SecurityError(f"no authorised public keys in {self.authorized}; every peer would be refused")
        self.admitted = set(zmq.auth.load_certificates(self.authorized))     # z85 public keys
        self.authenticator: ThreadAuthenticator | None = None
        self.on_refused = None

    def callback(self, domain: str, client_key: bytes) -> bool:
        """The ZAP check (pyzmq's credentials-provider hook), run in the authenticator's thread
        for every CURVE handshake; client_key is the offered public key in Z85."""
        if client_key in self.admitted:
            return True
        if self.on_refused is not None:
            self.on_refused(f"refused a CurveZMQ handshake: public key {client_key.decode(errors='replace')} "
                            f"is not in {self.authorized}")
        return False

    def __call__(self, socket: zmq.Socket) -> None:
        self.authenticator = ThreadAuthenticator(socket.context)
        self.authenticator.start()
        self.authenticator.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()

    def stop(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


class CurveClient:
    """Apply to a worker's or client's DEALER before connect."""

    def __init__(self, directory: str, name: str):
        self.server_public, _ = _load(os.path.join(directory, "coordinator.key"), False)
        self.public, self.secret = _load(os.path.join(directory, "clients", f"{name}.key_secret"), True)

    def __call__(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server_public


MISMATCH = ("one side runs with --curve-keys and the other without: give the same key folder to "
            "the coordinator and to every worker and client, or to none of them")
WRONG_SERVER_KEY = ("the coordinator's public key in the key folder does not match the coordinator (copy "
                    "coordinator.key from the folder the coordinator uses), or it runs without --curve-keys")
PLAIN_DROPPED = ("the coordinator dropped this client's plain-text handshake: it runs with --curve-keys, "
                 "so give this client --curve-keys DIR too")
FAILURES_BEFORE_GIVING_UP = 3   # handshakes without detail, in a row: one could be a coordinator restarting


class HandshakeWatch:
    """A client's view of its handshakes (a libzmq socket monitor), which are otherwise silent:
    a ZAP refusal (status 400), a CURVE handshake the coordinator could not decrypt (a wrong
    coordinator key), and a mechanism mismatch (CurveZMQ on one side only)."""

    EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)

    def __init__(self, curve: bool):
        self.curve = curve
        self.monitor = None
        self.undetailed_in_a_row = 0
        # a connection that ends before any handshake event is a failure without detail too: libzmq
        # reports a peer that hangs up mid-handshake one way or the other, depending on timing
        self.handshake_seen = False

    def attach(self, socket: zmq.Socket) -> None:
        """Before the socket connects: a handshake that fails at once is seen too."""
        self.monitor = socket.get_monitor_socket(self.EVENTS)

    def refusal(self) -> str | None:
        """Why the last handshake failed, if one did since the last call; never blocks."""
        reason = None
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            kind = event["event"]
            if kind == zmq.EVENT_DISCONNECTED:
                silent, self.handshake_seen = not self.handshake_seen, False
                if not silent:
                    continue            # a connection that had its handshake ended: not a refusal
            else:
                self.handshake_seen = True
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.undetailed_in_a_row = 0
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                reason = (f"the coordinator refused this key (ZAP status {event['value']}): add its public "
                          f"key to the coordinator's authorized/ folder, or use --key-name of an authorised client")
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                reason = f"the handshake failed: {MISMATCH}"
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_DISCONNECTED):   # it hung up
                self.undetailed_in_a_row += 1
                if self.undetailed_in_a_row >= FAILURES_BEFORE_GIVING_UP:
                    reason = (f"the CurveZMQ handshake failed: {WRONG_SERVER_KEY}" if self.curve
                              else f"the handshake failed: {PLAIN_DROPPED}")
        return reason

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close(linger=0)


class ServerHandshakeWatch:
    """The coordinator's view of the handshakes it failed, so that a refused peer is reported on
    this side too (a ZAP refusal is reported by CurveServer.callback)."""

    def __init__(self, socket: zmq.Socket, curve: bool):
        self.curve = curve
        self.monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)

    def failures(self) -> list[str]:
        """One line per failed handshake since the last call; never blocks."""
        lines = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            if event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                lines.append(f"refused a connection: {MISMATCH}")
            elif self.curve and event["value"] == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                lines.append("refused a CurveZMQ handshake that this coordinator's key cannot decrypt: the "
                             "client has another coordinator.key than this coordinator's")
            else:
                lines.append(f"refused a connection: handshake failed (ZMTP error {event['value']:#x})")
        return lines

    def close(self) -> None:
        self.monitor.close(linger=0)
