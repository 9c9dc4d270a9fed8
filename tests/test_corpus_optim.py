"""Sharding arithmetic, windows, RMSprop and clipping by hand."""
import numpy as np
import pytest

from model.config import Config
from model.corpus import build_vocab, make_corpus, resolve_chunk_len, split_point
from concurrent.futures import ThreadPoolExecutor

from model.optim import clip_scale, rmsprop, summed_gradient
from helpers import generated_text

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


def test_decoupled_weight_decay_by_hand_in_place_and_over_threads():
    rng = np.random.default_rng(4)
    p, g = rng.standard_normal(3_000_000), rng.standard_normal(3_000_000)
    v = rng.random(3_000_000)
    expected_v = 0.9 * v + 0.1 * g * g
    expected = p * (1 - 0.01 * 0.1) - 0.01 * g / (np.sqrt(expected_v) + 1e-8)
    got = rmsprop(p, v.copy(), g, lr=0.01, rho=0.9, eps=1e-8, weight_decay=0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    in_place, threaded = p.copy(), p.copy()
    rmsprop(in_place, v.copy(), g, lr=0.01, rho=0.9, eps=1e-8, weight_decay=0.1, out=in_place)
    with ThreadPoolExecutor(4) as pool:
        rmsprop(threaded, v.copy(), g, lr=0.01, rho=0.9, eps=1e-8, weight_decay=0.1, out=threaded, executor=pool)
    assert np.array_equal(in_place, got) and np.array_equal(threaded, got)
    with pytest.raises(ValueError, match="weight_decay"):
        Config(weight_decay=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        Config(lr=0.5, weight_decay=2.0)        # would turn every parameter's sign
    with pytest.raises(ValueError, match="lr > 0"):
        Config(lr=0.0, weight_decay=0.1)


def test_summed_gradient_and_clip_scale():
    a, b, c = np.array([3.0, 0.0, 1.0]), np.array([0.0, 4.0, -1.0]), np.array([0.0, 0.0, 0.0])
    out = np.full(3, np.nan)
    grad, norm = summed_gradient([a, b, c], out)
    assert grad is out and norm == pytest.approx(5.0)
    np.testing.assert_array_equal(out, [3.0, 4.0, 0.0])
    grad, norm = summed_gradient([a], out)
    assert grad is a and norm == pytest.approx(np.sqrt(10.0))
    assert clip_scale(5.0, 1.0) == pytest.approx(0.2)
    assert clip_scale(5.0, 0.0) == 1.0 and clip_scale(0.5, 1.0) == 1.0


def test_rmsprop_scaled_gradient_equals_scaling_first():
    rng = np.random.default_rng(0)
    p, v, g = rng.normal(size=1000), rng.random(1000), rng.normal(size=1000)
    v_scaled = v.copy()
    expected = rmsprop(p, v, g * 0.03, lr=0.01, rho=0.9, eps=1e-8)
    got = rmsprop(p, v_scaled, g, lr=0.01, rho=0.9, eps=1e-8, grad_scale=0.03)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(v_scaled, v, rtol=1e-12)


def test_optimizer_step_over_threads_is_bit_identical():
    rng = np.random.default_rng(1)
    p, v, g1, g2 = (rng.normal(size=10_001).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    v_threaded = v.copy()
    grad, norm = summed_gradient([g1, g2], np.empty_like(p))
    one = rmsprop(p, v, grad, lr=0.01, rho=0.9, eps=1e-8, grad_scale=0.5)
    with ThreadPoolExecutor(3) as executor:
        grad_t, norm_t = summed_gradient([g1, g2], np.empty_like(p), executor)
        split = rmsprop(p, v_threaded, grad_t, lr=0.01, rho=0.9, eps=1e-8, grad_scale=0.5,
                        executor=executor)
    assert norm == norm_t and np.array_equal(grad, grad_t)
    assert np.array_equal(one, split) and np.array_equal(v, v_threaded)
