"""The shipped saves/shakespeare.npz loads, samples and evaluates (no retraining)."""
import json
import os

import numpy as np

from model.checkpoint import load_model
import helpers

SHIPPED = os.path.join(helpers.ROOT, "saves", "shakespeare.npz")


def test_shipped_model_loads_with_its_meta():
    meta, params = load_model(SHIPPED)
    assert meta["format"] == "charlstm-model/1" and meta["layers"] == 2 and meta["hidden"] == 512
    assert len(meta["vocab"]) == 65 and meta["val_fraction"] == 0.1
    assert params.dtype == np.float32 and np.isfinite(params).all()
    assert os.path.getsize(SHIPPED) < 10_000_000


def test_the_shipped_model_writes_english_like_text():
    result = helpers.run_script("sample.py", "--checkpoint", SHIPPED, "--length", 300, "--seed", 1,
                                "--temperature", 0.5)
    text = result.stdout
    assert len(text) == 302 and "the shipped model" in result.stderr
    words = [w for w in text.split() if w.isalpha()]
    common = {"the", "and", "to", "of", "I", "you", "my", "a", "that", "in", "is", "not", "me", "with"}
    assert sum(w in common for w in words) >= 5, text      # it writes English-like text


def test_shipped_model_evaluates(tmp_path):
    text = tmp_path / "speech.txt"
    text.write_text("KING RICHARD II:\nNow is the winter of our discontent, my lord, and the king "
                    "shall have his crown.\n", encoding="utf-8")
    figures = json.loads(helpers.run_script("evaluate.py", "--checkpoint", SHIPPED, "--text", text,
                                            "--json").stdout)
    assert figures["chars"] == len(text.read_text()) - 1
    assert figures["nats_per_char"] < 2.5          # a trained model, far below uniform's 4.17
