"""A save-dir never loses work silently: a resume keeps the run's settings, --fresh archives the
old run, and one run at a time writes a save-dir."""
import json
import os
import signal

import numpy as np
import pytest

import helpers
from model.checkpoint import load_state

pytestmark = pytest.mark.timeout(120)

TINY = ["--layers", "1", "--hidden", "8", "--chunks", "3", "--seq-len", "10", "--dtype", "float64"]


def local(corpus, save_dir, *args, check=True):
    return helpers.run_script("train_local.py", "--corpus", corpus, "--save-dir", save_dir, "--no-progress",
                              "--workers", 0, *args, check=check)


def stored(save_dir):
    return load_state(os.path.join(save_dir, "checkpoint.npz")).config


def test_a_resume_keeps_the_checkpoint_s_settings_unless_a_flag_changes_them(corpus, tmp_path):
    save_dir = str(tmp_path / "run")
    local(corpus, save_dir, *TINY, "--lr", "0.002", "--dropout", "0.3", "--clip", "1", "--steps", 3)
    resumed = local(corpus, save_dir, "--steps", 6)          # no flag at all: not even the shape
    config = stored(save_dir)
    assert (config.lr, config.dropout, config.clip, config.hidden) == (0.002, 0.3, 1.0, 8)
    assert "resume:" not in resumed.stderr + resumed.stdout
    changed = local(corpus, save_dir, "--steps", 7, "--lr", "0.001", "--dropout", "0.3")
    assert stored(save_dir).lr == 0.001 and stored(save_dir).dropout == 0.3
    lines = [l for l in (changed.stderr + changed.stdout).splitlines() if l.startswith("resume:")]
    assert lines == ["resume: lr 0.002 -> 0.001, as a flag asks"]
    # the same run without a stop: a resume that keeps the settings changes no bit
    straight = str(tmp_path / "straight")
    local(corpus, straight, *TINY, "--lr", "0.002", "--dropout", "0.3", "--clip", "1", "--steps", 6)
    split = str(tmp_path / "split")
    local(corpus, split, *TINY, "--lr", "0.002", "--dropout", "0.3", "--clip", "1", "--steps", 3)
    local(corpus, split, "--steps", 6)
    assert np.array_equal(helpers.params_of(split), helpers.params_of(straight))
    conflict = local(corpus, save_dir, "--steps", 8, "--hidden", "16", check=False)
    assert conflict.returncode == 2 and "hidden: checkpoint has 8, asked for 16" in conflict.stderr


def test_fresh_archives_the_previous_run_and_says_where(corpus, tmp_path):
    save_dir = str(tmp_path / "run")
    local(corpus, save_dir, *TINY, "--steps", 4, "--checkpoint-every", 1)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    fresh = local(corpus, save_dir, *TINY, "--steps", 2, "--fresh", "--checkpoint-every", 1)
    archived = os.path.join(save_dir, "previous-runs", os.listdir(os.path.join(save_dir, "previous-runs"))[0])
    assert f"moved the previous run's checkpoint.npz, history, metrics.jsonl" in fresh.stderr + fresh.stdout
    assert archived in fresh.stderr + fresh.stdout
    assert load_state(os.path.join(archived, "checkpoint.npz")).step == 4
    assert sorted(os.listdir(os.path.join(save_dir, "history"))) == [
        "checkpoint-000000001.npz", "checkpoint-000000002.npz"]
    steps = [json.loads(l)["step"] for l in open(os.path.join(save_dir, "metrics.jsonl"))]
    assert steps == [1, 2] and (tmp_path / "run" / "notes.txt").read_text() == "mine"
    os.unlink(os.path.join(save_dir, "checkpoint.npz"))      # a fallback names the file it resumed from
    resumed = local(corpus, save_dir, "--steps", 3)
    assert "resuming from " + os.path.join(save_dir, "history", "checkpoint-000000002.npz") in resumed.stderr


def test_one_run_at_a_time_writes_a_save_dir_and_a_dead_holder_s_lock_is_taken_over(corpus, tmp_path):
    save_dir = str(tmp_path / "run")
    coordinator, _ = helpers.start_coordinator(corpus, save_dir, 5, workers=2)     # waits for workers
    try:
        second = local(corpus, save_dir, *helpers.SMALL, "--steps", 1, check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by another run (pid {coordinator.pid})" in second.stderr
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
    finally:
        helpers.stop_all(coordinator)
    taken = local(corpus, save_dir, *helpers.SMALL, "--steps", 1)
    assert f"took over the lock of {save_dir} from pid {coordinator.pid}" in taken.stderr + taken.stdout
