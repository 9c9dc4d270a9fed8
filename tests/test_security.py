"""CurveZMQ: authorised workers train; unauthorised and plain-text peers are refused; warnings."""
import os
import re
import shutil
import time

import pytest
import zmq

from coordinator.client import PullError, pull_model
from protocol.security import CurveClient, SecurityError, create_keys
import helpers
from helpers import generated_text

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("keys"))
    helpers.run_script("make_keys.py", directory, "--clients", "worker", "sampler")
    stranger = str(tmp_path_factory.mktemp("stranger"))       # a valid key pair nobody authorised
    create_keys(stranger, ["intruder"])
    os.makedirs(os.path.join(directory, "clients"), exist_ok=True)
    for suffix in (".key", ".key_secret"):
        shutil.copyfile(os.path.join(stranger, "clients", "intruder" + suffix),
                        os.path.join(directory, "clients", "intruder" + suffix))
    return directory


@pytest.fixture
def secure_coordinator(keys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(8000), encoding="utf-8")
    endpoint_file = str(tmp_path / "endpoint")
    coordinator = helpers.spawn("coordinator", "--bind", "tcp://127.0.0.1:*", "--endpoint-file", endpoint_file,
                              "--curve-keys", keys, "--corpus", corpus, "--save-dir", tmp_path, "--steps", 3,
                              *helpers.SMALL, log_path=str(tmp_path / "coordinator.log"))
    endpoint = helpers.read_endpoint(endpoint_file, coordinator)
    yield coordinator, endpoint, tmp_path
    helpers.stop_all(coordinator)


def test_authorised_clients_pull_and_workers_train(keys, secure_coordinator):
    coordinator, endpoint, save_dir = secure_coordinator
    meta, params = pull_model(endpoint, 10, CurveClient(keys, "sampler"))
    assert meta["step"] == 0 and params.size > 0
    worker = helpers.spawn("worker", "--connect", endpoint, "--curve-keys", keys, "--key-name", "worker")
    try:
        assert coordinator.wait(60) == 0
        assert worker.wait(20) == 0
    finally:
        helpers.stop_all(worker)
    log = (save_dir / "coordinator.log").read_text()
    assert "CURVE on" in log and "WARNING" not in log
    assert [m["step"] for m in helpers.metrics(str(save_dir))] == [1, 2, 3]


def test_unauthorised_key_is_refused_and_both_sides_say_so(keys, secure_coordinator):
    _, endpoint, save_dir = secure_coordinator
    with pytest.raises(PullError, match="refused this key"):
        pull_model(endpoint, 5, CurveClient(keys, "intruder"))
    intruder_key = open(os.path.join(keys, "clients", "intruder.key")).read()
    helpers.wait_for(lambda: "refused a CurveZMQ handshake" in (save_dir / "coordinator.log").read_text(),
                     10, "the coordinator's log line")
    line = next(l for l in (save_dir / "coordinator.log").read_text().splitlines() if "refused a CurveZMQ" in l)
    offered = line.split("public key ")[1].split()[0]
    assert offered in intruder_key


def test_plain_text_peer_is_refused_and_both_sides_say_why(secure_coordinator):
    coordinator, endpoint, save_dir = secure_coordinator
    # libzmq tells a plain-text client either that the mechanisms differ or nothing at all: both say what to do
    told = "one side runs with --curve-keys and the other without|it runs with --curve-keys, so give this client"
    with pytest.raises(PullError, match=told):
        pull_model(endpoint, 10)
    log_path = str(save_dir / "plain.log")
    plain = helpers.spawn("worker", "--connect", endpoint, "--liveness", "1", log_path=log_path)
    try:
        assert plain.wait(20) == 2
    finally:
        helpers.stop_all(plain)
    errors = [l for l in open(log_path).read().splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and re.search(told, errors[0])
    helpers.wait_for(lambda: "refused a connection: one side runs with --curve-keys" in
                     (save_dir / "coordinator.log").read_text(), 10, "the coordinator's line")
    assert coordinator.poll() is None


def test_a_wrong_coordinator_key_is_reported_on_both_sides(keys, secure_coordinator, tmp_path):
    coordinator, endpoint, save_dir = secure_coordinator
    wrong = tmp_path / "wrong"
    shutil.copytree(keys, wrong)
    create_keys(str(tmp_path / "other"), [])                      # another coordinator's key pair
    shutil.copyfile(tmp_path / "other" / "coordinator.key", wrong / "coordinator.key")
    log_path = str(save_dir / "wrong.log")
    worker = helpers.spawn("worker", "--connect", endpoint, "--curve-keys", wrong, "--key-name", "worker",
                           "--liveness", "1", log_path=log_path)
    try:
        assert worker.wait(20) == 2
    finally:
        helpers.stop_all(worker)
    errors = [l for l in open(log_path).read().splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "does not match the coordinator" in errors[0]
    helpers.wait_for(lambda: "this coordinator's key cannot decrypt" in (save_dir / "coordinator.log").read_text(),
                     10, "the coordinator's line")


def test_the_idle_hint_names_a_reachable_address_and_the_keys(keys, tmp_path):
    from coordinator.service import Coordinator
    hint = Coordinator.worker_command
    stub = type("Stub", (), {"endpoint": "tcp://0.0.0.0:5555", "curve_server": object()})()
    assert hint(stub) == "python -m worker --connect tcp://THIS-HOST:5555 --curve-keys DIR --key-name worker"
    stub.endpoint, stub.curve_server = "tcp://127.0.0.1:7", None
    assert hint(stub) == "python -m worker --connect tcp://127.0.0.1:7"


def test_an_unauthorised_worker_never_gets_work(keys, secure_coordinator):
    coordinator, endpoint, save_dir = secure_coordinator
    log_path = str(save_dir / "intruder.log")
    intruder = helpers.spawn("worker", "--connect", endpoint, "--curve-keys", keys, "--key-name", "intruder",
                             "--liveness", "1", log_path=log_path)
    try:
        assert intruder.wait(20) == 2          # it says why and stops, rather than waiting in silence
    finally:
        helpers.stop_all(intruder)
    errors = [l for l in open(log_path).read().splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "refused this key" in errors[0]
    assert "registered" not in (save_dir / "coordinator.log").read_text()
    assert helpers.metrics(str(save_dir)) == [] and coordinator.poll() is None


def test_missing_keys_are_a_clear_error(tmp_path):
    with pytest.raises(SecurityError, match="make_keys.py"):
        CurveClient(str(tmp_path), "worker")


def test_unauthenticated_wildcard_bind_warns_loudly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(3000), encoding="utf-8")
    endpoint_file = str(tmp_path / "endpoint")
    coordinator = helpers.spawn("coordinator", "--bind", "tcp://*:*", "--endpoint-file", endpoint_file,
                              "--corpus", corpus, "--save-dir", tmp_path, *helpers.SMALL,
                              log_path=str(tmp_path / "coordinator.log"))
    try:
        helpers.read_endpoint(endpoint_file, coordinator)
    finally:
        helpers.stop_all(coordinator)
    assert "WARNING: listening on tcp://0.0.0.0" in (tmp_path / "coordinator.log").read_text()


def test_a_nested_header_from_an_authorised_key_is_dropped_and_the_coordinator_serves_on(keys, secure_coordinator):
    """One 1,054-byte message from the sampler's key (meant only for pulling) once killed a CURVE
    coordinator without a checkpoint."""
    from test_hostile import nested_header
    coordinator, endpoint, save_dir = secure_coordinator
    context = zmq.Context()
    sampler = context.socket(zmq.DEALER)
    CurveClient(keys, "sampler")(sampler)
    sampler.connect(endpoint)
    try:
        for _ in range(3):
            sampler.send_multipart(nested_header())
        helpers.wait_for(lambda: "header nests containers deeper" in (save_dir / "coordinator.log").read_text(),
                         10, "the coordinator's drop line")
    finally:
        sampler.close(0)
        context.term()
    meta, _ = pull_model(endpoint, 10, CurveClient(keys, "sampler"))
    assert coordinator.poll() is None and meta["step"] == 0


@pytest.fixture
def curve_listener():
    """A bare CurveZMQ ROUTER: every plain-text handshake with it fails on the mechanism."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    public, secret = zmq.curve_keypair()
    router.curve_server, router.curve_publickey, router.curve_secretkey = True, public, secret
    port = router.bind_to_random_port("tcp://127.0.0.1")
    yield f"tcp://127.0.0.1:{port}"
    router.close(linger=0)
    context.term()


def connected_too_late(real_connect):
    """connect_dealer as a process slowed down by a loaded machine sees it: by its first send the
    failed handshake has already ended its only connection, and libzmq blocks a send for good.
    (Some failed handshakes leave the connection queueing instead; then it connects again.)"""
    def connect(context, endpoint, curve_client=None, before_connect=None):
        for _ in range(20):
            socket = real_connect(context, endpoint, curve_client, before_connect)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    socket.send(b"", zmq.NOBLOCK)     # queued on a connection that will not last, or Again
                except zmq.Again:
                    return socket
                time.sleep(0.02)
            getattr(before_connect, "__self__", None) and before_connect.__self__.close()
            socket.close(linger=0)
        raise AssertionError("libzmq never dropped a refused connection in 20 tries")
    return connect


def finishes(call, within_s: float = 15) -> list:
    """[what call returned or raised], or [] when it is still blocked after within_s."""
    import threading
    outcome = []

    def run():
        try:
            outcome.append(call())
        except Exception as error:      # noqa: BLE001 - the test looks at what it was
            outcome.append(error)
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(within_s)
    return outcome


def test_a_client_whose_refused_connection_is_gone_before_it_sends_still_says_why(curve_listener, monkeypatch):
    import coordinator.client as client
    monkeypatch.setattr(client, "connect_dealer", connected_too_late(client.connect_dealer))
    outcome = finishes(lambda: pull_model(curve_listener, 5))   # before the fix: blocked in its send for good
    assert len(outcome) == 1 and isinstance(outcome[0], PullError), outcome
    assert "one side runs with --curve-keys and the other without" in str(outcome[0])


def test_a_worker_whose_refused_connection_is_gone_before_it_registers_still_says_why(curve_listener, monkeypatch):
    import worker.session as session_module
    from worker.reconnect import WorkerMath, WorkerSettings
    monkeypatch.setattr(session_module, "connect_dealer", connected_too_late(session_module.connect_dealer))
    context, lines = zmq.Context(), []
    session = session_module.Session(WorkerSettings(curve_listener, "late", relaying=False), context, WorkerMath(),
                                     1.0, 5.0, log=lines.append, reject_log=lines.append, stopping=lambda: False)
    outcome = finishes(session.run)     # before the fix its `register` blocked for good: a silent hang
    assert outcome == ["refused"], lines
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "one side runs with --curve-keys and the other without" in errors[0]
    context.term()
