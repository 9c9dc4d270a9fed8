"""The LSTM's math: gradient checks, batching, carried state, float32 vs float64."""
import numpy as np
import pytest

from model import lstm
from model.params import ParamLayout, init_params


def tiny_problem(dtype=np.float64, layers=2, hidden=5, vocab=7, batch=3, steps=6, seed=0):
    layout = ParamLayout.for_model(vocab, layers, hidden)
    flat = init_params(layout, hidden, seed, np.float64)
    rng = np.random.default_rng(seed + 1)
    flat += rng.normal(0, 0.3, flat.shape)          # move away from the symmetric start
    inputs = rng.integers(0, vocab, (batch, steps)).astype(np.int32)
    targets = rng.integers(0, vocab, (batch, steps)).astype(np.int32)
    h0 = rng.normal(0, 0.5, (layers, batch, hidden))
    c0 = rng.normal(0, 0.5, (layers, batch, hidden))
    return layout, flat.astype(dtype), inputs, targets, h0.astype(dtype), c0.astype(dtype)


def summed_loss(layout, flat, inputs, targets, h0, c0):
    logits, _ = lstm.forward(layout.views(flat), inputs, h0, c0)
    return lstm.cross_entropy(logits, targets)[0]


def analytic(layout, flat, inputs, targets, h0, c0):
    grad = np.zeros_like(flat)
    loss, h_last, c_last, dh0, dc0 = lstm.loss_and_grad(
        layout.views(flat), layout.views(grad), inputs, targets, h0, c0)
    return loss, grad, dh0, dc0, h_last, c_last


def relative_error(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12)


def centred_differences(fn, array, step=1e-5):
    numeric = np.zeros_like(array)
    flat = array.reshape(-1)
    out = numeric.reshape(-1)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + step
        plus = fn()
        flat[k] = saved - step
        minus = fn()
        flat[k] = saved
        out[k] = (plus - minus) / (2 * step)
    return numeric


def test_gradient_check_every_parameter_float64():
    layout, flat, inputs, targets, h0, c0 = tiny_problem()
    _, grad, _, _, _, _ = analytic(layout, flat, inputs, targets, h0, c0)
    numeric = centred_differences(lambda: summed_loss(layout, flat, inputs, targets, h0, c0), flat)
    for name in layout.names:
        error = relative_error(layout.views(grad)[name], layout.views(numeric)[name])
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


def test_gradient_check_initial_state_float64():
    layout, flat, inputs, targets, h0, c0 = tiny_problem()
    _, _, dh0, dc0, _, _ = analytic(layout, flat, inputs, targets, h0, c0)
    loss = lambda: summed_loss(layout, flat, inputs, targets, h0, c0)  # noqa: E731
    assert relative_error(dh0, centred_differences(loss, h0)) < 1e-6
    assert relative_error(dc0, centred_differences(loss, c0)) < 1e-6


def test_batched_equals_one_chunk_at_a_time():
    layout, flat, inputs, targets, h0, c0 = tiny_problem(batch=4)
    loss, grad, _, _, h_last, c_last = analytic(layout, flat, inputs, targets, h0, c0)
    total_loss, total_grad = 0.0, np.zeros_like(flat)
    for b in range(4):
        one = analytic(layout, flat, inputs[b:b + 1], targets[b:b + 1], h0[:, b:b + 1], c0[:, b:b + 1])
        total_loss += one[0]
        total_grad += one[1]
        np.testing.assert_allclose(one[4][:, 0], h_last[:, b], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(one[5][:, 0], c_last[:, b], rtol=1e-12, atol=1e-14)
    assert abs(total_loss - loss) < 1e-10 * abs(loss)
    assert relative_error(total_grad, grad) < 1e-12


def test_carried_state_two_windows_equal_one_long_window():
    layout, flat, inputs, targets, h0, c0 = tiny_problem(steps=10)
    params = layout.views(flat)
    logits_long, caches = lstm.forward(params, inputs, h0, c0)
    first, caches_first = lstm.forward(params, inputs[:, :5], h0, c0)
    second, caches_second = lstm.forward(params, inputs[:, 5:], *lstm.final_state(caches_first))
    np.testing.assert_allclose(np.concatenate([first, second]), logits_long, rtol=1e-12, atol=1e-13)
    for a, b in zip(lstm.final_state(caches_second), lstm.final_state(caches)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_float32_matches_float64_to_float32_precision():
    layout, flat, inputs, targets, h0, c0 = tiny_problem(hidden=32, vocab=11, batch=5, steps=20)
    loss64, grad64, *_ = analytic(layout, flat, inputs, targets, h0, c0)
    loss32, grad32, *_ = analytic(layout, flat.astype(np.float32), inputs, targets,
                                  h0.astype(np.float32), c0.astype(np.float32))
    assert grad32.dtype == np.float32
    assert abs(loss32 - loss64) < 1e-5 * abs(loss64)
    assert relative_error(grad32.astype(np.float64), grad64) < 1e-4


def test_bad_shapes_fail_loudly():
    layout, flat, inputs, targets, h0, c0 = tiny_problem()
    with pytest.raises(ValueError, match="state must be"):
        lstm.forward(layout.views(flat), inputs, h0[:, :1], c0)
    with pytest.raises(ValueError, match="input indices"):
        lstm.forward(layout.views(flat), inputs + 100, h0, c0)


def test_cross_entropy_stays_finite_when_softmax_underflows():
    logits = np.array([[[1000.0, -1000.0]]], dtype=np.float32)   # (T=1, B=1, V=2)
    loss, dlogits = lstm.cross_entropy(logits, np.array([[1]]))
    assert loss == pytest.approx(2000.0) and np.isfinite(dlogits).all()


def test_gradient_check_with_dropout_masks_float64():
    layout, flat, inputs, targets, h0, c0 = tiny_problem()
    rng = np.random.default_rng(7)
    masks = (rng.random((2, inputs.shape[1], inputs.shape[0], 5)) < 0.7) / 0.7   # (L, T, B, H)
    grad = np.zeros_like(flat)
    lstm.loss_and_grad(layout.views(flat), layout.views(grad), inputs, targets, h0, c0, masks)

    def loss():
        logits, _ = lstm.forward(layout.views(flat), inputs, h0, c0, masks)
        return lstm.cross_entropy(logits, targets)[0]
    assert relative_error(grad, centred_differences(loss, flat)) < 1e-6
