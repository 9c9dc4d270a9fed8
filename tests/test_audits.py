"""Audits (SPEC.md 5.7) against registered workers that return wrong numbers: each liar is named,
stopped and barred, the run goes back to a state from before the liar's first step, a replacement
joins, and the final checkpoint equals a clean run's with the same worker count, array by array."""
import os
import re

import numpy as np
import pytest

import helpers
from model.checkpoint import read_npz

pytestmark = pytest.mark.timeout(240)
CHUNKS = 7


def run(corpus, save_dir, steps, honest_before, lie, honest_after, *flags, worker_flags=(), spares=1):
    """Workers in token order: honest_before honest ones, the liar (if lie), honest_after more;
    when the liar is named, `spares` honest replacements. Returns the coordinator's log."""
    workers = honest_before + (1 if lie else 0) + honest_after
    coordinator, endpoint = helpers.start_coordinator(corpus, save_dir, steps, "--chunks", CHUNKS, *flags,
                                                      workers=workers)
    log_path = os.path.join(save_dir, "coordinator.log")
    pool, registered = [], lambda n: len(re.findall(r"registered \(token", open(log_path).read())) >= n
    for k in range(workers):
        liar = lie and k == honest_before
        module = ("tests.liar_worker", lie) if liar else ("worker",)
        pool.append(helpers.spawn(*module, "--connect", endpoint, "--name", "liar" if liar else f"w{k}",
                                  *flags_for(worker_flags), log_path=os.path.join(save_dir, f"worker{k}.log")))
        helpers.wait_for(lambda: registered(k + 1), 30, f"worker {k} to register")   # token order = this order
    try:
        if lie:
            helpers.wait_for(lambda: "is wrong" in open(log_path).read(), 120, "the liar to be named")
            pool += [helpers.spawn("worker", "--connect", endpoint, "--name", f"spare{k}", *flags_for(worker_flags),
                                   log_path=os.path.join(save_dir, f"spare{k}.log")) for k in range(spares)]
        coordinator.wait(timeout=180)
        assert coordinator.returncode == 0, open(log_path).read()[-3000:]
    finally:
        helpers.stop_all(coordinator, *pool)
    return open(log_path).read()


def flags_for(worker_flags) -> list:
    """A worker's flags; a callable among them is asked for its value (e.g. each worker's key name)."""
    return [flag() if callable(flag) else flag for flag in worker_flags]


def same_arrays(a_dir, b_dir):
    a, b = read_npz(os.path.join(a_dir, "checkpoint.npz")), read_npz(os.path.join(b_dir, "checkpoint.npz"))
    assert a.keys() == b.keys()
    for name in a:
        if name != "meta":
            assert np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def clean3(tmp_path_factory, corpus):
    save_dir = str(tmp_path_factory.mktemp("clean3"))
    log = run(corpus, save_dir, 14, 3, None, 0, "--audit-share", "1")
    assert "0 failed" in log, log[-2000:]
    return save_dir


@pytest.mark.parametrize("lie", ["negate-sum", "add-1000"])
def test_a_mid_chain_liar_is_named_and_undone(tmp_path, corpus, clean3, lie):
    log = run(corpus, str(tmp_path), 14, 1, lie, 1, "--audit-share", "1")
    named = re.search(r"audit of step (\d+) \((.*?)\): worker 'liar' is wrong — (.*)", log)
    assert named, log[-3000:]
    assert "the sum it sent on" in named.group(3), named.group(0)
    assert re.search(r"rolled back from step \d+ to step 0", log), log[-2000:]
    same_arrays(str(tmp_path), clean3)


def test_a_liar_that_also_lies_in_its_sums_is_named_with_its_neighbour(tmp_path, corpus, clean3):
    """The two ends of a link report different sums: either may lie (they share the link's key),
    so both are named and barred, and two replacements take their places."""
    log = run(corpus, str(tmp_path), 14, 1, "negate-sum-hidden", 1, "--audit-share", "1", spares=2)
    for name in ("liar", "w2"):
        assert re.search(rf"worker '{name}' is wrong — the relay link into chunks 5-6 at step \d+: its two ends "
                         r"report different sums", log), log[-3000:]
    assert "'w0' is wrong" not in log
    same_arrays(str(tmp_path), clean3)


def test_a_chain_member_that_does_not_answer_an_audit_is_named(tmp_path, corpus, clean3):
    log = run(corpus, str(tmp_path), 14, 1, "mute", 1, "--audit-share", "1")
    assert re.search(r"worker 'liar' is wrong — it did not answer the audit of step \d+ within 1.5s", log), log[-3000:]
    same_arrays(str(tmp_path), clean3)


def test_a_bit_flip_every_50th_step_is_caught_at_step_50(tmp_path, tmp_path_factory, corpus):
    clean = str(tmp_path_factory.mktemp("clean60"))
    run(corpus, clean, 60, 3, None, 0, "--audit-share", "1")
    log = run(corpus, str(tmp_path), 60, 1, "flip-bit-50", 1, "--audit-share", "1")
    assert re.search(r"audit of step 50 \(a random audit\): worker 'liar' is wrong — (the sum it sent on|its own gradient)", log), \
        log[-3000:]
    assert "rolled back from step 50 to step 0" in log
    same_arrays(str(tmp_path), clean)


def test_a_direct_worker_with_a_wrong_gradient_is_caught_by_a_copy(tmp_path, tmp_path_factory, corpus):
    clean = str(tmp_path_factory.mktemp("clean2"))
    run(corpus, clean, 14, 2, None, 0, "--audit-share", "1", worker_flags=("--no-relay",))
    log = run(corpus, str(tmp_path), 14, 1, "wrong-own", 0, "--audit-share", "1", worker_flags=("--no-relay",))
    named = re.search(r"worker 'liar' is wrong — its (result|copy) of chunks \d+-\d+ at step \d+: gradient piece", log)
    assert named, log[-3000:]
    assert "'w0' is wrong" not in log
    same_arrays(str(tmp_path), clean)


def test_the_guard_catches_a_gross_attack_between_audits(tmp_path, tmp_path_factory, corpus, monkeypatch):
    clean = str(tmp_path_factory.mktemp("clean30"))
    run(corpus, clean, 30, 3, None, 0, "--audit-share", "0")
    monkeypatch.setenv("LIE_FROM_STEP", "20")
    log = run(corpus, str(tmp_path), 30, 1, "add-1000", 1, "--audit-share", "0")
    called = re.search(r"step (\d+): gradient norm .* auditing every result", log)
    assert called and int(called.group(1)) in (20, 21), log[-3000:]
    named = re.search(r"audit of step (\d+) \(an audit the guard called .*\): worker 'liar' is wrong", log)
    assert named and named.group(1) == called.group(1), log[-3000:]
    same_arrays(str(tmp_path), clean)


def test_damage_from_unaudited_steps_is_undone(tmp_path, tmp_path_factory, corpus):
    """Lies no audit saw (steps 5-15, audits off) changed the parameters; the guard catches the
    gross lie at step 20, and the run goes back to before the liar's first step: the workers,
    registered again, must not reuse parameters they held for the old steps 0-20."""
    clean = str(tmp_path_factory.mktemp("clean30"))
    run(corpus, clean, 30, 3, None, 0, "--audit-share", "0")
    log = run(corpus, str(tmp_path), 30, 1, "sneaky", 1, "--audit-share", "0")
    assert re.search(r"audit of step 20 \(an audit the guard called .*\): worker 'liar' is wrong", log), log[-3000:]
    assert "rolled back from step 20 to step 0" in log
    same_arrays(str(tmp_path), clean)


@pytest.mark.skipif(not __import__("zmq").has("curve"), reason="libzmq without CURVE")
def test_with_keys_the_liar_s_key_is_named(tmp_path, corpus):
    """Each worker its own key: the line that names the liar names its key, to be removed."""
    from protocol.security import create_keys
    keys = str(tmp_path / "keys")
    create_keys(keys, ["w0", "liar", "w2", "spare0"])
    names = iter(["w0", "liar", "w2", "spare0"])
    log = run(corpus, str(tmp_path / "run"), 10, 1, "negate-sum", 1, "--audit-share", "1", "--curve-keys", keys,
              worker_flags=("--curve-keys", keys, "--key-name", lambda: next(names)))
    public = open(os.path.join(keys, "clients", "liar.key")).read()
    key = re.search(r'public-key = "(.*)"', public).group(1)
    assert re.search(rf"worker 'liar' is wrong — .* it came with the CurveZMQ key {re.escape(key)}:", log), log[-3000:]


def test_another_arithmetic_raises_no_false_alarm(tmp_path, corpus, monkeypatch):
    """A worker whose OpenBLAS is forced to another kernel declares another arithmetic: audited
    every step against the others, within the tolerance, never named."""
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Sandybridge")     # inherited by the first worker only
    coordinator, endpoint = helpers.start_coordinator(corpus, str(tmp_path), 40, "--chunks", CHUNKS,
                                                      "--audit-share", "1", "--dtype", "float32", workers=2)
    other = helpers.spawn("worker", "--connect", endpoint, "--name", "sandybridge",
                          log_path=os.path.join(str(tmp_path), "worker0.log"))
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    native = helpers.spawn("worker", "--connect", endpoint, "--name", "native",
                           log_path=os.path.join(str(tmp_path), "worker1.log"))
    try:
        coordinator.wait(timeout=180)
    finally:
        helpers.stop_all(coordinator, other, native)
    log = open(os.path.join(str(tmp_path), "coordinator.log")).read()
    assert coordinator.returncode == 0 and "audits: 40 run (0 called by the guard), 0 failed" in log, log[-3000:]


@pytest.mark.parametrize("flags", [("--dtype", "float32", "--dropout", "0.3", "--wire-dtype", "bfloat16"), ()])
def test_the_referee_computes_a_worker_s_bits(tmp_path, corpus, flags):
    """One worker, every step audited by the coordinator's own computation: bit for bit alike."""
    log = run(corpus, str(tmp_path), 8, 1, None, 0, "--audit-share", "1", *flags)
    assert "audits: 8 run (0 called by the guard), 0 failed" in log, log[-2000:]
