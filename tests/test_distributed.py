"""Real processes on loopback: equivalence, determinism, resume, a killed worker, live pulls."""
import os
import signal

import numpy as np
import pytest

import helpers
from helpers import relative, start_cluster

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("extra", [(), ("--dropout", "0.3", "--lr-decay", "0.5")])
def test_one_and_three_workers_and_one_process_agree(corpus, tmp_path, extra):
    results = {}
    for workers in (0, 1, 3):
        save_dir = str(tmp_path / f"w{workers}")
        helpers.train(corpus, save_dir, "--steps", 4, "--workers", workers, *extra)
        results[workers] = helpers.params_of(save_dir)
    assert relative(results[1], results[0]) < 1e-10
    assert relative(results[3], results[0]) < 1e-10
    assert helpers.metrics(str(tmp_path / "w3"))[-1]["workers"] == 3


def test_same_worker_count_is_bit_identical(corpus, tmp_path):
    for name in ("a", "b"):
        helpers.train(corpus, str(tmp_path / name), "--steps", 3, "--workers", 2)
    np.testing.assert_array_equal(helpers.params_of(str(tmp_path / "a")), helpers.params_of(str(tmp_path / "b")))


def test_resume_equals_uninterrupted_bit_for_bit(corpus, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    helpers.train(corpus, straight, "--steps", 6, "--workers", 2)
    helpers.train(corpus, resumed, "--steps", 3, "--workers", 2)
    out = helpers.train(corpus, resumed, "--steps", 6, "--workers", 2)
    assert "resuming from" in out.stdout + out.stderr
    np.testing.assert_array_equal(helpers.params_of(resumed), helpers.params_of(straight))
    assert [m["step"] for m in helpers.metrics(resumed)] == list(range(1, 7))


def test_resume_with_another_architecture_is_refused(corpus, tmp_path):
    helpers.train(corpus, str(tmp_path), "--steps", 0, "--workers", 0)
    result = helpers.run_script("train_local.py", "--corpus", corpus, "--save-dir", tmp_path, "--no-progress",
                              *helpers.SMALL[:2], "--hidden", "32", *helpers.SMALL[4:], "--steps", "1",
                              "--workers", "0", check=False)
    assert result.returncode == 2 and "hidden: checkpoint has 16, asked for 32" in result.stderr


def test_steps_zero_writes_the_initial_checkpoint(corpus, tmp_path):
    helpers.train(corpus, str(tmp_path), "--steps", 0, "--workers", 1)
    from model.checkpoint import load_state
    assert load_state(str(tmp_path / "checkpoint.npz")).step == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_killed_worker_does_not_change_the_result(corpus, tmp_path, seed):
    """SIGKILL at a seeded random step and moment (before or after that worker's push): every step
    completes once, and the parameters equal an uninterrupted run's, so no window was skipped or
    applied twice."""
    import random
    import time
    rng = random.Random(seed)
    kill_after, delay = rng.randint(1, 8), rng.uniform(0.0, 0.03)
    save_dir = str(tmp_path / "killed")
    coordinator, _, pool = start_cluster(corpus, save_dir, 60, 2, "--hidden", "48")
    try:
        helpers.wait_for(lambda: helpers.last_step(save_dir) >= kill_after, 60, f"step {kill_after}")
        time.sleep(delay)
        pool[rng.randrange(2)].send_signal(signal.SIGKILL)
        assert helpers.last_step(save_dir) < 50, "the kill must land well before the last step"
        assert coordinator.wait(120) == 0
    finally:
        helpers.stop_all(coordinator, *pool)
    assert "declared dead" in open(os.path.join(save_dir, "coordinator.log")).read()
    assert [m["step"] for m in helpers.metrics(save_dir)] == list(range(1, 61))
    same_shape = str(tmp_path / "same")
    helpers.train(corpus, same_shape, "--steps", 60, "--workers", 0, "--hidden", "48")
    assert relative(helpers.params_of(save_dir), helpers.params_of(same_shape)) < 1e-6


def test_pull_live_weights_while_training(corpus, tmp_path):
    save_dir = str(tmp_path)
    coordinator, endpoint, pool = start_cluster(corpus, save_dir, 100_000, 1, "--hidden", "48")
    try:
        helpers.wait_for(lambda: helpers.last_step(save_dir) >= 2, 60, "training to start")
        from coordinator.client import pull_model
        meta, params = pull_model(endpoint, timeout_s=10)
        assert meta["hidden"] == 48 and meta["step"] >= 2 and np.isfinite(params).all()
        result = helpers.run_script("sample.py", "--coordinator", endpoint, "--length", 40, "--seed", 1)
        assert len(result.stdout) == 42 and result.stdout.endswith("\n")      # prime "\n" + 40 + "\n"
        assert f"model: the live weights of the coordinator at {endpoint}" in result.stderr
        exported = os.path.join(save_dir, "live.npz")
        helpers.run_script("export.py", "--coordinator", endpoint, "--out", exported)
        for script, flags in (("sample.py", ["--length", 5]), ("evaluate.py", ["--text", corpus]),
                              ("visualize.py", ["--text", corpus, "--length", 300, "--out",
                                                os.path.join(save_dir, "n.html")])):
            helpers.run_script(script, "--checkpoint", exported, *flags)
        before = helpers.last_step(save_dir)
        helpers.wait_for(lambda: helpers.last_step(save_dir) > before + 2, 30, "training to go on")
        coordinator.send_signal(signal.SIGTERM)
        assert coordinator.wait(20) == 0
        for worker in pool:
            assert worker.wait(20) == 0        # told to stop
    finally:
        helpers.stop_all(coordinator, *pool)
    assert "SIGTERM: writing checkpoint" in open(os.path.join(save_dir, "coordinator.log")).read()
    from model.checkpoint import load_state
    assert load_state(os.path.join(save_dir, "checkpoint.npz")).step >= before + 2


def test_coordinator_killed_and_restarted_resumes_bit_identically(corpus, tmp_path):
    straight = str(tmp_path / "straight")
    helpers.train(corpus, straight, "--steps", 30, "--workers", 2, "--hidden", "48")
    save_dir = str(tmp_path / "restarted")
    coordinator, endpoint, pool = start_cluster(corpus, save_dir, 30, 2, "--hidden", "48")
    try:
        helpers.wait_for(lambda: helpers.last_step(save_dir) >= 4, 60, "step 4")
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
        killed_at = helpers.last_step(save_dir)
        assert killed_at < 25, "the kill must land well before the last step"
        import time
        restarted = time.monotonic()
        coordinator = helpers.spawn("coordinator", "--bind", endpoint, "--corpus", corpus, "--save-dir", save_dir,
                                  "--steps", 30, "--heartbeat", "0.2", "--liveness", "1.5", "--min-workers", 2,
                                  *helpers.SMALL, "--hidden", "48",
                                  log_path=os.path.join(save_dir, "coordinator2.log"))
        helpers.wait_for(lambda: len(helpers.metrics(save_dir)) > killed_at, 60, "a step after the restart")
        print(f"first step {time.monotonic() - restarted:.2f}s after the coordinator restarted")
        assert coordinator.wait(120) == 0
        for worker in pool:
            assert worker.wait(20) == 0
    finally:
        helpers.stop_all(coordinator, *pool)
    assert "resuming from" in open(os.path.join(save_dir, "coordinator2.log")).read()
    np.testing.assert_array_equal(helpers.params_of(save_dir), helpers.params_of(straight))


@pytest.mark.parametrize("wire", ["bfloat16", "float16"])
def test_a_narrow_wire_rounds_alike_in_process_and_over_the_network(corpus, tmp_path, wire):
    results = {}
    for workers in (0, 1, 3):
        save_dir = str(tmp_path / f"w{workers}")
        helpers.train(corpus, save_dir, "--steps", 4, "--workers", workers, "--wire-dtype", wire)
        results[workers] = helpers.params_of(save_dir)
    exact = str(tmp_path / "exact")
    helpers.train(corpus, exact, "--steps", 4, "--workers", 0)
    np.testing.assert_array_equal(results[1], results[0])
    print(f"{wire}: 3 workers vs one process {relative(results[3], results[0]):.1e}, "
          f"vs the exact wire {relative(results[0], helpers.params_of(exact)):.1e}")
    assert relative(results[3], results[0]) < 1e-2            # a few bfloat16 roundings apart
    assert relative(results[0], helpers.params_of(exact)) > 1e-6


@pytest.mark.timeout(240)
def test_sums_on_a_narrow_wire_end_on_the_same_bits_by_chain_or_direct(corpus, tmp_path):
    """--chain-sums wire: 3 workers relaying their sums in bfloat16 along a chain, against the
    same run with every worker sending direct (the coordinator then rounds its own sum alike).
    Every step of the chained run is audited: the chain's sum checked as it adds (SPEC.md 5.7)."""
    chained, direct = str(tmp_path / "chained"), str(tmp_path / "direct")
    flags = ("--chunks", "7", "--wire-dtype", "bfloat16", "--chain-sums", "wire")
    for save_dir, coordinator_flags, worker_flags in ((chained, ("--audit-share", "1"), ()),
                                                      (direct, (), ("--no-relay",))):
        helpers.run_cluster(corpus, save_dir, 6, 3, flags + coordinator_flags, worker_flags)
    assert sum(m["relayed"] for m in helpers.metrics(chained)) >= 2
    assert sum(m["relayed"] for m in helpers.metrics(direct)) == 0
    log = open(os.path.join(chained, "coordinator.log")).read()
    assert "audits: 6 run (0 called by the guard), 0 failed" in log, log[-2000:]
    np.testing.assert_array_equal(helpers.params_of(chained), helpers.params_of(direct))
    plain = str(tmp_path / "plain")             # the rounding is there: sums in float32 end elsewhere
    helpers.run_cluster(corpus, plain, 6, 3, flags[:4], ("--no-relay",))
    assert not np.array_equal(helpers.params_of(plain), helpers.params_of(direct))
