"""CurveZMQ: authorised workers train; unauthorised and plain-text peers are refused; warnings."""
import os
import re
import shutil

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
