"""Sampling, evaluation, activations, and a tiny model that learns."""
import numpy as np
import pytest

from model.config import Config
from model.corpus import make_corpus
from model.inference import Model, activations, evaluate, sample
from model.params import ParamLayout, init_params
from model.training import new_state
from helpers import local_steps


def random_model(vocab="\nabc:", hidden=6, seed=0):
    layout = ParamLayout.for_model(len(vocab), 2, hidden)
    meta = {"vocab": vocab, "layers": 2, "hidden": hidden}
    return Model(meta, init_params(layout, hidden, seed, np.float64) * 3)


def test_sampling_is_deterministic_for_a_seed():
    model = random_model()
    first = "".join(sample(model, 50, "ab", 1.0, seed=5))
    assert first == "".join(sample(model, 50, "ab", 1.0, seed=5))
    assert first != "".join(sample(model, 50, "ab", 1.0, seed=6))
    assert len(first) == 50 and set(first) <= set(model.vocab)


def test_tiny_temperature_is_argmax():
    model = random_model()
    text = "".join(sample(model, 20, "a", 1e-4, seed=1))
    state = model.zero_state()
    logits, _, state = model.run(np.array([model.vocab.index("a")], np.int32), state)
    expected = []
    for _ in range(20):
        index = int(np.argmax(logits[-1]))
        expected.append(model.vocab[index])
        logits, _, state = model.run(np.array([index], np.int32), state)
    assert text == "".join(expected)


def test_top_k_one_is_argmax_too():
    model = random_model()
    assert "".join(sample(model, 15, "b", 1.0, top_k=1, seed=1)) == "".join(sample(model, 15, "b", 1e-4, seed=9))


def test_bad_sampling_arguments():
    model = random_model()
    with pytest.raises(ValueError, match="temperature"):
        next(sample(model, 5, "a", 0.0))
    with pytest.raises(ValueError, match="'z'"):
        next(sample(model, 5, "z", 1.0))


def test_evaluate_matches_windowed_and_whole():
    model = random_model()
    text = "ab:c\nabca:b\n" * 30
    whole = evaluate(model, text, window=10_000)
    windowed = evaluate(model, text, window=7)
    assert whole["chars"] == len(text) - 1
    assert whole["nats_per_char"] == pytest.approx(windowed["nats_per_char"], rel=1e-12)
    assert whole["bits_per_char"] == pytest.approx(whole["nats_per_char"] / np.log(2))


def test_activations_shapes_and_ranges():
    model = random_model()
    acts = activations(model, "abc\nab")
    assert acts["h"].shape == (2, 6, 6) and acts["probs"].shape == (6, 5)
    assert np.all(np.abs(acts["h"]) <= 1) and np.all((acts["i"] >= 0) & (acts["i"] <= 1))
    np.testing.assert_allclose(acts["probs"].sum(axis=1), 1.0)
    np.testing.assert_allclose(acts["h"], acts["o"] * np.tanh(acts["c"]), atol=1e-12)


def test_a_tiny_model_overfits_a_short_text():
    text = "the cat sat on the mat. " * 40
    corpus, config = make_corpus(text, Config(layers=1, hidden=32, chunks=2, seq_len=20, lr=1e-2,
                                              dtype="float64"))
    state = new_state(config, corpus)
    losses = [loss for loss, _ in local_steps(state, corpus, 150)]
    assert losses[0] > 2.0
    assert np.mean(losses[-10:]) < 0.3, losses[-10:]
