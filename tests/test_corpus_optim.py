"""Sharding arithmetic, windows, RMSprop and clipping by hand."""
import numpy as np
import pytest

from model.config import Config
from model.corpus import build_vocab, make_corpus, resolve_chunk_len, split_point
from model.optim import clip_by_global_norm, rmsprop
from tests.conftest import generated_text

TINY_SHAKESPEARE_CHARS = 1_115_394


def test_default_chunk_len_on_a_corpus_of_the_real_length_is_44600():
    assert resolve_chunk_len(TINY_SHAKESPEARE_CHARS, 25, 100) == 44_600
    text = generated_text(TINY_SHAKESPEARE_CHARS)
    corpus, config = make_corpus(text, Config())
    assert config.chunk_len == 44_600 and corpus.chunk_len == 44_600
    assert corpus.steps_per_epoch == 446


def test_validation_split_matches_nanogpt():
    assert split_point(TINY_SHAKESPEARE_CHARS, 0.1) == 1_003_854
    assert TINY_SHAKESPEARE_CHARS - split_point(TINY_SHAKESPEARE_CHARS, 0.1) == 111_540


def test_chunks_windows_and_targets():
    text = generated_text(5000)
    corpus, config = make_corpus(text, Config(chunks=3, seq_len=10, val_fraction=0.2))
    train = text[:4000]
    L = config.chunk_len
    assert L == ((4000 - 1) // 3 // 10) * 10
    vocab = build_vocab(text)
    inputs, targets = corpus.window(2, [1, 2])
    assert "".join(vocab[i] for i in inputs[0]) == train[L + 20:L + 30]
    assert "".join(vocab[i] for i in targets[1]) == train[2 * L + 21:2 * L + 31]
    assert corpus.val_text.size == 1000
    with pytest.raises(IndexError):
        corpus.window(corpus.steps_per_epoch)


def test_explicit_chunk_len_must_fit():
    text = generated_text(1000)
    _, config = make_corpus(text, Config(chunks=2, seq_len=10, chunk_len=400))
    assert config.chunk_len == 400
    with pytest.raises(ValueError, match="needs 1001"):
        make_corpus(text, Config(chunks=2, seq_len=10, chunk_len=500))


def test_rmsprop_step_by_hand():
    p = np.array([1.0, -2.0, 0.5])
    v = np.array([0.0, 0.1, 4.0])
    g = np.array([0.5, -1.0, 0.0])
    new_p = rmsprop(p, v, g, lr=0.01, rho=0.9, eps=1e-8)
    expected_v = np.array([0.9 * 0.0 + 0.1 * 0.25, 0.9 * 0.1 + 0.1 * 1.0, 0.9 * 4.0])
    np.testing.assert_allclose(v, expected_v, rtol=1e-15)
    np.testing.assert_allclose(new_p, p - 0.01 * g / (np.sqrt(expected_v) + 1e-8), rtol=1e-15)


def test_clip_by_global_norm():
    g = np.array([3.0, 4.0])
    assert clip_by_global_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g, [0.6, 0.8])
    g = np.array([3.0, 4.0])
    clip_by_global_norm(g, 0.0)
    np.testing.assert_allclose(g, [3.0, 4.0])
