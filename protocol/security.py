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


def create_keys(directory: str, clients: list[str]) -> None:
    """A coordinator key pair (kept if present) and one pair per client, each authorised."""
    if not zmq.has("curve"):
        raise SecurityError("this libzmq was built without CURVE support")
    for sub in ("clients", "authorized"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    if not os.path.exists(os.path.join(directory, "coordinator.key_secret")):
        zmq.auth.create_certificates(directory, "coordinator")
    for name in clients:
        public, _ = zmq.auth.create_certificates(os.path.join(directory, "clients"), name)
        shutil.copyfile(public, os.path.join(directory, "authorized", f"{name}.key"))
    os.chmod(directory, 0o700)


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


class HandshakeWatch:
    """The client's view of its CURVE handshakes (a libzmq socket monitor): the coordinator's
    ZAP refusal arrives as a failed handshake with status 400, which is otherwise silent."""

    EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL

    def __init__(self, socket: zmq.Socket):
        self.monitor = socket.get_monitor_socket(self.EVENTS)

    def refusal(self) -> str | None:
        """Why the last handshake failed, if one did since the last call; never blocks."""
        reason = None
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                reason = (f"the coordinator refused this key (ZAP status {event['value']}): add its public "
                          f"key to the coordinator's authorized/ folder, or use --key-name of an authorised client")
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                reason = ("the CurveZMQ handshake failed: the coordinator's key in the key folder does not "
                          "match the coordinator, or it runs without --curve-keys")
        return reason

    def close(self) -> None:
        self.monitor.close(linger=0)
