"""Decoupled weight decay (Config.weight_decay): the coordinator's, so worker counts agree, and a
resumed run equals an uninterrupted one. The arithmetic by hand: tests/test_corpus_optim.py."""
import numpy as np

import helpers


def test_workers_agree_with_one_process_and_a_resume_with_an_uninterrupted_run(corpus, tmp_path):
    results = {}
    for name, workers in (("w0", 0), ("w2", 2), ("plain", 0)):
        save_dir = str(tmp_path / name)
        decay = ("--weight-decay", "0.5") if name != "plain" else ()
        helpers.train(corpus, save_dir, "--workers", workers, "--steps", 4, *decay)
        results[name] = helpers.params_of(save_dir)
    assert helpers.relative(results["w2"], results["w0"]) < 1e-10       # 1 vs N workers, float64
    assert not np.array_equal(results["w0"], results["plain"])
    resumed = str(tmp_path / "resumed")
    helpers.train(corpus, resumed, "--workers", 0, "--steps", 2, "--weight-decay", "0.5")
    helpers.train(corpus, resumed, "--workers", 0, "--steps", 4)       # the checkpoint keeps its decay
    assert np.array_equal(helpers.params_of(resumed), results["w0"])
