"""docker-compose.yml without a Docker engine: parse it, then run each service's own command and
environment as local processes (service names mapped to 127.0.0.1, volumes to temp folders)."""
import os
import socket
import subprocess
import sys

import pytest
import yaml

import helpers
from helpers import generated_text

ROOT = helpers.ROOT
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def compose():
    with open(os.path.join(ROOT, "docker-compose.yml")) as handle:
        return yaml.safe_load(handle)


def test_compose_file_declares_the_cluster(compose):
    services = compose["services"]
    assert set(services) >= {"coordinator", "worker", "sample"}
    coordinator = services["coordinator"]
    assert "5555:5555" in coordinator["ports"] and "healthcheck" in coordinator
    assert coordinator["restart"] and any(v.endswith(":/checkpoints") for v in coordinator["volumes"])
    assert services["worker"]["deploy"]["replicas"] >= 1
    assert not services["worker"].get("volumes"), "workers need no corpus volume"
    assert services["sample"]["profiles"] == ["tools"]
    assert os.path.exists(os.path.join(ROOT, services["coordinator"]["build"], "Dockerfile"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def localise(argv, port, mounts):
    out = []
    for arg in argv:
        arg = arg.replace("tcp://*:5555", f"tcp://127.0.0.1:{port}")
        arg = arg.replace("tcp://coordinator:5555", f"tcp://127.0.0.1:{port}")
        for inside, outside in mounts.items():
            if arg.startswith(inside):
                arg = outside + arg[len(inside):]
        out.append(arg)
    return out


def service_process(service, port, mounts, extra=(), **kwargs):
    argv = localise(service["command"], port, mounts)
    assert argv[0] == "python"
    env = dict(helpers.env(), **{k: str(v) for k, v in service.get("environment", {}).items()})
    return subprocess.Popen([sys.executable, *argv[1:], *extra], cwd=ROOT, env=env, **kwargs)


def test_services_run_as_local_processes(compose, tmp_path):
    data, checkpoints = tmp_path / "data", tmp_path / "checkpoints"
    data.mkdir()
    checkpoints.mkdir()
    (data / "tinyshakespeare.txt").write_text(generated_text(20_000), encoding="utf-8")
    mounts = {"/data": str(data), "/checkpoints": str(checkpoints)}
    port = free_port()
    services = compose["services"]
    coordinator = service_process(services["coordinator"], port, mounts,
                                  ["--steps", "4", "--hidden", "16", "--chunks", "4", "--seq-len", "20",
                                   "--min-workers", "2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers = [service_process(services["worker"], port, mounts, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        output, _ = coordinator.communicate(timeout=90)
        assert coordinator.returncode == 0, output
        assert "step 4/4" in output and "WARNING: listening on tcp://127.0.0.1" not in output
        for worker in workers:
            assert worker.wait(20) == 0
    finally:
        helpers.stop_all(coordinator, *workers)
    assert (checkpoints / "checkpoint.npz").exists()
    # the sample service pulls from a live coordinator: run one that waits for a worker forever
    coordinator = service_process(services["coordinator"], port, mounts, ["--hidden", "16", "--chunks", "4",
                                                                          "--seq-len", "20"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sampler = service_process(services["sample"], port, mounts, ["--length", "30"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = sampler.communicate(timeout=60)
        assert sampler.returncode == 0, err
        assert len(out) == 32                 # the echoed prime "\n", 30 characters, "\n"
    finally:
        helpers.stop_all(coordinator)


@pytest.mark.skipif(not __import__("zmq").has("curve"), reason="libzmq without CURVE")
def test_secure_overlay_runs_with_keys_laid_out_as_its_secrets(compose, tmp_path):
    """Lay the make_keys.py files out where the overlay's secrets put them, then run the services."""
    import shutil
    with open(os.path.join(ROOT, "docker-compose.secure.yml")) as handle:
        overlay = yaml.safe_load(handle)
    keys = tmp_path / "keys"
    helpers.run_script("make_keys.py", keys, "--clients", "worker", "sampler")
    secrets_root = tmp_path / "secrets"
    data, checkpoints = tmp_path / "data", tmp_path / "checkpoints"
    data.mkdir()
    checkpoints.mkdir()
    (data / "tinyshakespeare.txt").write_text(generated_text(20_000), encoding="utf-8")
    for name in ("coordinator", "worker", "sample"):
        for secret in overlay["services"][name]["secrets"]:
            source = overlay["secrets"][secret["source"]]["file"]
            target = secrets_root / os.path.relpath(secret["target"], "/run/secrets")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / source, target)
    mounts = {"/data": str(data), "/checkpoints": str(checkpoints), "/run/secrets": str(secrets_root)}
    services = {name: dict(compose["services"][name], **overlay["services"][name]) for name in overlay["services"]}
    port = free_port()
    coordinator = service_process(services["coordinator"], port, mounts,
                                  ["--steps", "3", "--hidden", "16", "--chunks", "4", "--seq-len", "20"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = service_process(services["worker"], port, mounts, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        output, _ = coordinator.communicate(timeout=90)
        assert coordinator.returncode == 0, output
        assert "CURVE on" in output and "step 3/3" in output and "WARNING" not in output
        assert worker.wait(20) == 0
    finally:
        helpers.stop_all(coordinator, worker)


# What `docker stack deploy` (Compose file format 3) refuses or ignores, per service.
NOT_IN_A_STACK = {"profiles", "build", "depends_on", "restart", "container_name", "links"}


def test_the_swarm_stack_is_a_valid_stack_with_the_compose_file_s_commands(compose):
    with open(os.path.join(ROOT, "docker-stack.yml")) as handle:
        stack = yaml.safe_load(handle)
    assert str(stack["version"]).startswith("3.") and float(stack["version"]) >= 3.3    # endpoint_mode
    assert set(stack["services"]) == {"coordinator", "worker"}
    for name, service in stack["services"].items():
        assert not NOT_IN_A_STACK & set(service), (name, NOT_IN_A_STACK & set(service))
        assert service["image"] == compose["services"][name]["image"]
        assert service["command"] == compose["services"][name]["command"], f"{name}: the stack trains alike"
        assert service["environment"] == compose["services"][name]["environment"]
    coordinator = stack["services"]["coordinator"]
    # a virtual IP did not carry ZeroMQ's connections on a real single-node swarm: DNS round robin
    # does, and it cannot use the routing mesh, so the port is published on the node itself
    assert coordinator["deploy"]["endpoint_mode"] == "dnsrr"
    assert coordinator["ports"] == [{"target": 5555, "published": 5555, "protocol": "tcp", "mode": "host"}]
    assert coordinator["deploy"]["replicas"] == 1
    assert stack["networks"]["default"]["attachable"] is True
