"""Failure drills with real processes: stalls, hostile input, dying checkpoint writers, SIGTERM."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from protocol import Message, encode
import helpers
from helpers import computed, malformed, valid_grad, valid_push
from helpers import relative, start_cluster

pytestmark = pytest.mark.timeout(180)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return int(re.search(r"VmRSS:\s+(\d+)", handle.read()).group(1))


def log_of(save_dir, name="coordinator.log") -> str:
    return open(os.path.join(save_dir, name)).read()


def test_stalled_worker_is_fenced_and_comes_back(corpus, tmp_path):
    """The run has no step target: steps take milliseconds here, so any fixed count could end
    before the resumed worker has even noticed its silence. It is stopped (SIGTERM, which
    checkpoints) once the returned worker has been part of a few steps."""
    save_dir = str(tmp_path)
    coordinator, _, pool = start_cluster(corpus, save_dir, 10 ** 6, 2, "--hidden", "48")
    try:
        helpers.wait_for(lambda: helpers.last_step(save_dir) >= 3, 60, "step 3")
        pool[1].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        helpers.wait_for(lambda: "declared dead" in log_of(save_dir), 30, "the stalled worker declared dead")
        detected = time.monotonic() - stopped_at
        step_when_dead = helpers.last_step(save_dir)
        helpers.wait_for(lambda: helpers.last_step(save_dir) >= step_when_dead + 2, 60, "training without it")
        pool[1].send_signal(signal.SIGCONT)
        helpers.wait_for(lambda: log_of(save_dir).count("registered") >= 3, 30, "the worker registering again")
        back_at = helpers.last_step(save_dir)
        helpers.wait_for(lambda: sum(m["workers"] == 2 for m in helpers.metrics(save_dir)[back_at:]) >= 3, 30,
                       "steps with the returned worker")
        coordinator.send_signal(signal.SIGTERM)
        assert coordinator.wait(60) == 0
    finally:
        for worker in pool:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
        helpers.stop_all(coordinator, *pool)
    # a stalled worker notices its own silence and registers afresh; whatever it might still send
    # with its old token is refused (tested with a hand-driven peer in the hostile-input drill)
    steps = helpers.last_step(save_dir)
    assert [m["step"] for m in helpers.metrics(save_dir)] == list(range(1, steps + 1))
    reference = str(tmp_path / "reference")
    helpers.train(corpus, reference, "--steps", steps, "--workers", 0, "--hidden", "48")
    assert relative(helpers.params_of(save_dir), helpers.params_of(reference)) < 1e-6
    print(f"stalled worker declared dead {detected:.2f}s after SIGSTOP (liveness 1.5s); {steps} steps")


def test_hostile_input_then_normal_training(corpus, tmp_path):
    save_dir = str(tmp_path)
    os.makedirs(save_dir, exist_ok=True)
    endpoint_file = os.path.join(save_dir, "endpoint")
    coordinator = helpers.spawn("coordinator", "--bind", "tcp://127.0.0.1:*", "--endpoint-file", endpoint_file,
                              "--corpus", corpus, "--save-dir", save_dir, "--steps", 4, *helpers.SMALL,
                              "--dtype", "float32", log_path=os.path.join(save_dir, "coordinator.log"))
    fake = stranger = None
    pool = []
    try:
        endpoint = helpers.read_endpoint(endpoint_file, coordinator)
        fake, stranger = helpers.Peer(endpoint), helpers.Peer(endpoint)
        fake.send(encode(Message("register", {"name": "fake", "relay": "", "arithmetic": "spec-built/1"})))
        welcome = fake.expect("welcome")
        work, pieces = fake.expect_work()
        from worker.compute import WorkerCompute
        computer = WorkerCompute(welcome["config"], welcome["vocab"])
        dims = computer.dims
        rss_before = rss_kb(coordinator.pid)
        rng = random.Random(99)
        good = valid_grad(dims, welcome["token"], 0, work["chunks"])
        sent = 0
        for _ in range(10_000):         # from a socket that never registered: dropped unanswered
            stranger.send(malformed(rng, good, dims))
            sent += 1
        # pushes for chunks this worker does not own, and for an old step: refused, state unchanged
        fake.send(valid_push(dims, welcome["token"], 0, [99]))
        fake.send(valid_push(dims, welcome["token"], 99, work["chunks"]))
        answer = [[bytes(f) for f in encode(message)] for message in computed(computer, work, pieces)]
        push = answer[-1]
        for message in answer:
            fake.send(message)
        assert fake.expect("reject")["refers_to"] == {"cmd": "push", "token": welcome["token"], "step": 0,
                                                      "chunks": [99]}
        assert fake.expect("reject")["refers_to"]["step"] == 99
        assert fake.expect("ack")["status"] == "accepted"
        fake.send(push)                                    # delivered twice: same answer, no change
        assert fake.expect("ack", skip=("heartbeat", "work", "params"))["status"] == "duplicate"
        rss_after = rss_kb(coordinator.pid)
        fake.send(encode(Message("bye", {"token": welcome["token"]})))
        fake.send(push)                                    # late words with a revoked token: fenced
        assert fake.expect("reject", skip=("heartbeat", "work", "params"))["reregister"] is True
        assert not stranger.socket.poll(0), "an unregistered socket's garbage is never answered"
        pool = [helpers.spawn("worker", "--connect", endpoint) for _ in range(2)]
        assert coordinator.wait(120) == 0
    finally:
        for peer in (fake, stranger):
            if peer:
                peer.close()
        helpers.stop_all(coordinator, *pool)
    log = log_of(save_dir)
    logged = len(re.findall(r"^(dropped|refused) ", log, re.M))
    suppressed = sum(int(n) for n in re.findall(r"\.\.\. (\d+) similar lines suppressed", log))
    total = int(re.search(r"(\d+) invalid or refused messages in this run", log).group(1))
    assert total == logged + suppressed >= sent + 3
    assert logged < 200, "the log must be rate-limited"
    # ~1,250 of the sets carry a full gradient (~26 KB): ~33 MB passes through the socket queues,
    # which the high-water mark bounds; growth well beyond that would mean something is kept
    assert rss_after - rss_before < 100_000, f"RSS grew by {rss_after - rss_before} kB"
    assert [m["step"] for m in helpers.metrics(save_dir)] == [1, 2, 3, 4]
    print(f"{sent} malformed frame sets, {total} rejections, 0 crashes; RSS {rss_before} -> {rss_after} kB")


def test_checkpoint_writer_killed_half_way(corpus, tmp_path):
    """A process dies (SIGKILL) while writing a large checkpoint: the old one stays readable."""
    helpers.train(corpus, str(tmp_path), "--steps", 1, "--workers", 0)
    before = open(tmp_path / "checkpoint.npz", "rb").read()
    writer = subprocess.Popen([sys.executable, "-c", f"""
import numpy as np
from model.checkpoint import write_npz_atomic
write_npz_atomic({str(tmp_path / 'checkpoint.npz')!r}, {{"big": np.random.default_rng(0).random(30_000_000)}})
"""], cwd=helpers.ROOT)
    helpers.wait_for(lambda: any(".npz.tmp-" in f and os.path.getsize(tmp_path / f) > 10_000_000
                               for f in os.listdir(tmp_path)), 60, "the writer to be half-way")
    writer.kill()
    writer.wait()
    assert open(tmp_path / "checkpoint.npz", "rb").read() == before
    out = helpers.train(corpus, str(tmp_path), "--steps", 2, "--workers", 0)
    assert "a checkpoint write that never finished" in out.stdout + out.stderr
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_corrupt_checkpoint_falls_back_to_the_previous_one(corpus, tmp_path):
    helpers.train(corpus, str(tmp_path), "--steps", 3, "--workers", 0)
    path = tmp_path / "checkpoint.npz"
    data = path.read_bytes()
    path.unlink()                                          # replace (not rewrite) so history keeps step 3
    path.write_bytes(data[: len(data) // 2])
    out = helpers.train(corpus, str(tmp_path), "--steps", 4, "--workers", 0)
    text = out.stdout + out.stderr
    assert "checkpoint.npz is corrupt or truncated" in text and "resuming from" in text
    straight = tmp_path / "straight"
    helpers.train(corpus, str(straight), "--steps", 4, "--workers", 0)
    np.testing.assert_array_equal(helpers.params_of(str(tmp_path)), helpers.params_of(str(straight)))


def test_sigterm_to_train_local_stops_everything(corpus, tmp_path):
    save_dir = str(tmp_path)
    launcher = subprocess.Popen([sys.executable, os.path.join(helpers.ROOT, "scripts", "train_local.py"),
                                 "--corpus", corpus, "--save-dir", save_dir, "--no-progress", *helpers.SMALL,
                                 "--hidden", "48", "--checkpoint-every", "1000", "--steps", "100000",
                                 "--workers", "2"], cwd=helpers.ROOT, env=helpers.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        helpers.wait_for(lambda: helpers.last_step(save_dir) >= 3, 60, "training to start")
        children = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                    if _parent(pid) == launcher.pid]
        assert len(children) == 3
        endpoint = re.search(r"listening on ipc://(\S+)", open_output(launcher, save_dir)).group(1)
        started = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(15) == 0
        took = time.monotonic() - started
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"]
    from model.checkpoint import load_state
    assert load_state(os.path.join(save_dir, "checkpoint.npz")).step >= 3
    assert not os.path.exists(endpoint)                      # nobody listens there any more
    print(f"train_local stopped {len(children)} children in {took:.2f}s after SIGTERM")


def open_output(launcher, save_dir) -> str:
    """The coordinator's startup lines; train_local passes them through on stdout."""
    lines = []
    while True:
        line = launcher.stdout.readline()
        lines.append(line)
        if "listening on" in line or not line:
            return "".join(lines)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_stalled_worker_s_groups_are_copied_and_the_bits_do_not_change(corpus, tmp_path):
    """A worker stopped for 2 s (well inside its liveness) would hold every step; backup copies
    on the other worker carry the run, and the model is bit-identical to an undisturbed run."""
    save_dir, reference = str(tmp_path / "stalled"), str(tmp_path / "reference")
    steps = 40
    coordinator, _, pool = start_cluster(corpus, save_dir, steps, 2, "--hidden", "48", "--liveness", "20")
    try:
        helpers.wait_for(lambda: helpers.last_step(save_dir) >= 5, 60, "step 5")
        pool[1].send_signal(signal.SIGSTOP)
        helpers.wait_for(lambda: sum(m.get("backups_won", 0) for m in helpers.metrics(save_dir)) >= 3, 30,
                         "three steps carried by backup copies")
        pool[1].send_signal(signal.SIGCONT)
        assert coordinator.wait(120) == 0
    finally:
        pool[1].send_signal(signal.SIGCONT)
        helpers.stop_all(coordinator, *pool)
    lines = helpers.metrics(save_dir)
    assert all(m["workers"] == 2 for m in lines if "workers" in m)
    won = sum(m.get("backups_won", 0) for m in lines)
    assert won >= 3
    carried = max(m["step_s"] for m in lines if m.get("backups_won"))
    steps_s = sorted(m["step_s"] for m in lines if "step_s" in m)
    usual = steps_s[len(steps_s) // 2]
    helpers.train(corpus, reference, "--steps", steps, "--workers", 2, "--hidden", "48")
    assert np.array_equal(helpers.params_of(save_dir), helpers.params_of(reference))
    print(f"{won} backup copies won while one worker was stopped; longest such step {carried:.3f}s "
          f"(median {usual:.3f}s, liveness 20s); bits equal the undisturbed run")
