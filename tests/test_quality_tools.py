"""Validation during training, best.npz, export, curves."""
import json
import os

import numpy as np

from model.checkpoint import load_model, load_state
import helpers
from helpers import generated_text


def test_validation_best_export_and_curves(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(12_000, seed=5), encoding="utf-8")
    save_dir = tmp_path / "run"
    helpers.train(str(corpus), str(save_dir), "--steps", 12, "--workers", 0, "--val-fraction", 0.2,
                "--eval-every", 4, "--dropout", 0.1, "--plot-every", 4)
    lines = helpers.metrics(str(save_dir))
    validations = [m for m in lines if "val_loss" in m]
    assert validations and validations[-1]["step"] == 12
    assert all(abs(m["val_bits"] - m["val_loss"] / np.log(2)) < 1e-9 for m in validations)
    state = load_state(str(save_dir / "checkpoint.npz"))
    best = min(validations, key=lambda m: m["val_loss"])
    assert state.extra_meta["best_val_loss"] == best["val_loss"]
    # best.npz is the model of the best step, and evaluate.py reproduces its figure exactly
    meta, _ = load_model(str(save_dir / "best.npz"))
    assert meta["step"] == best["step"]
    result = json.loads(helpers.run_script("evaluate.py", "--checkpoint", save_dir / "best.npz", "--text", corpus,
                                         "--tail-fraction", 0.2, "--json").stdout)
    assert abs(result["nats_per_char"] - best["val_loss"]) < 1e-9
    # a float16 model-only export samples and evaluates like a checkpoint, a few MB smaller
    out = tmp_path / "model.npz"
    helpers.run_script("export.py", "--checkpoint", save_dir / "checkpoint.npz", "--out", out)
    assert os.path.getsize(out) < os.path.getsize(save_dir / "checkpoint.npz") / 3
    exported = json.loads(helpers.run_script("evaluate.py", "--checkpoint", out, "--text", corpus,
                                           "--tail-fraction", 0.2, "--json").stdout)
    assert abs(exported["nats_per_char"] - validations[-1]["val_loss"]) < 5e-3
    assert len(helpers.run_script("sample.py", "--checkpoint", out, "--length", 20).stdout) == 22
    page = (save_dir / "curves.html").read_text()
    assert page.count("<svg") == 2 and "best validation loss" in page and "src=" not in page


def test_plot_without_metrics_is_a_clear_error(tmp_path):
    result = helpers.run_script("plot.py", "--save-dir", tmp_path, check=False)
    assert result.returncode == 2 and "no metrics.jsonl" in result.stderr


def test_eval_every_without_held_out_text_is_refused(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(5000), encoding="utf-8")
    result = helpers.run_script("train_local.py", "--corpus", corpus, "--save-dir", tmp_path, "--workers", 0,
                              "--steps", 1, "--eval-every", 2, check=False)
    assert result.returncode == 2 and "--val-fraction" in result.stderr


def test_a_validation_a_stop_interrupts_runs_again_on_resume(tmp_path):
    """Nothing lost silently: the checkpoint written at a stop names the step whose validation
    was still running; the resumed run scores that step's snapshot (best.npz included)."""
    from model.config import Config
    from model.corpus import make_corpus
    from model.training import new_state
    from model.validation import PENDING, Validator
    text = generated_text(6000, seed=2)
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    corpus, config = make_corpus(text, Config(layers=1, hidden=8, chunks=4, seq_len=10, val_fraction=0.2))
    state = new_state(config, corpus)
    state.step = 7
    said = []
    validator = Validator(str(tmp_path), str(tmp_path / "corpus.txt"), 0.2, said.append)
    validator.start(state)
    validator.close()                              # the stop, before the child answered
    assert state.extra_meta[PENDING] == 7 and "validation of step 7 interrupted" in said[-1]
    state.step = 9                                 # the run went on to its checkpoint at the stop
    resumed = Validator(str(tmp_path), str(tmp_path / "corpus.txt"), 0.2, said.append)
    resumed.resume(state)
    result = resumed.poll(state, wait=True)
    assert result["step"] == 7 and "validating step 7 again" in said[-2]
    assert PENDING not in state.extra_meta and state.extra_meta["best_val_step"] == 7
    assert load_model(str(tmp_path / "best.npz"))[0]["step"] == 7
    state.extra_meta[PENDING] = 8                  # a snapshot of another step: said, not scored
    resumed.resume(state)
    assert resumed.process is None and PENDING not in state.extra_meta and "no validation loss" in said[-1]
