"""Config.ema_decay: a moving average of the parameters that never changes training, is exact
on resume and the same for any worker count, and is scored beside the parameters."""
import json
import os

import numpy as np
import pytest

import helpers
from model.average import ParamAverage, debiased

pytestmark = pytest.mark.timeout(180)


def arrays_of(save_dir):
    with np.load(os.path.join(save_dir, "checkpoint.npz")) as archive:
        return {k: archive[k] for k in archive.files if k != "meta"}


def test_the_average_moves_by_one_minus_decay_toward_the_parameters():
    rng = np.random.default_rng(0)
    average, params = rng.standard_normal(7), rng.standard_normal(7)
    expected = average + (1 - 0.9) * (params - average)
    ParamAverage(0.9).update(average, params)
    np.testing.assert_array_equal(average, expected)
    # started from zero and debiased: a weighted mean of what it saw, the first parameters included
    first, second, average = rng.standard_normal(7), rng.standard_normal(7), np.zeros(7)
    for params in (first, second):
        ParamAverage(0.9).update(average, params)
    np.testing.assert_allclose(debiased(average, 0.9, 2), (0.9 * first + second) / 1.9, rtol=1e-14)
    assert not debiased(average, 0.9, 0).any()


def test_the_average_changes_no_step_resumes_exactly_and_agrees_across_worker_counts(corpus, tmp_path):
    runs = {}
    for name, flags in (("plain", ()), ("averaged", ("--ema-decay", "0.9")), ("workers", ("--ema-decay", "0.9"))):
        workers = 2 if name == "workers" else 0
        runs[name] = str(tmp_path / name)
        helpers.train(corpus, runs[name], "--steps", 6, "--workers", workers, *flags)
    plain, averaged = arrays_of(runs["plain"]), arrays_of(runs["averaged"])
    assert all(np.array_equal(plain[k], averaged[k]) for k in plain)       # training itself unchanged
    assert any(k.startswith("average/") for k in averaged)
    assert not any(np.array_equal(averaged[k], averaged[k.replace("average/", "param/")])
                   for k in averaged if k.startswith("average/"))
    split = str(tmp_path / "split")
    helpers.train(corpus, split, "--steps", 3, "--workers", 0, "--ema-decay", "0.9")
    resumed = helpers.train(corpus, split, "--steps", 6, "--workers", 0)       # keeps the decay it recorded
    assert "moving average" not in resumed.stderr
    again = arrays_of(split)
    assert all(np.array_equal(again[k], averaged[k]) for k in averaged)
    workers = arrays_of(runs["workers"])
    for key in (k for k in averaged if k.startswith("average/")):
        assert helpers.relative(workers[key], averaged[key]) < 1e-10          # float64: 1 = N workers


def test_validation_scores_the_average_too_and_keeps_the_better(corpus, tmp_path):
    save_dir = str(tmp_path / "run")
    helpers.train(corpus, save_dir, "--steps", 6, "--workers", 0, "--val-fraction", "0.2", "--eval-every", "3",
                  "--ema-decay", "0.5")
    validations = [m for m in helpers.metrics(save_dir) if "val_loss" in m]
    assert [m["step"] for m in validations] == [3, 6] and all("average_val_loss" in m for m in validations)
    meta = json.loads(np.load(os.path.join(save_dir, "checkpoint.npz"))["meta"].tobytes())
    best = min(min(m["val_loss"], m["average_val_loss"]) for m in validations)
    assert meta["best_val_loss"] == best and meta["best_val_of"] in ("parameters", "average")
    assert os.path.exists(os.path.join(save_dir, "best.npz"))
    assert "validation, averaged parameters" in open(os.path.join(save_dir, "curves.html")).read()
    turned_off = helpers.train(corpus, save_dir, "--steps", 7, "--workers", 0, "--val-fraction", "0.2",
                               "--ema-decay", "0")
    assert "drops the checkpoint's moving average" in turned_off.stderr + turned_off.stdout
    assert not any(k.startswith("average/") for k in arrays_of(save_dir))
