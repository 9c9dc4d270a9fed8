"""The per-step recurrent product cut into column blocks gives the same numbers as one product."""
import numpy as np
import pytest

from model import lstm
from model.params import ParamLayout, init_params


@pytest.mark.parametrize("rows, K, N, steps, expected_width", [
    (13, 512, 2048, 100, 32),     # forward, 2 workers' share of the default batch
    (25, 2048, 512, 100, 16),     # backward (W_h.T), the whole default batch
    (13, 2048, 512, 100, 32),
    (7, 64, 40, 100, 0),          # N not a multiple of any block width: one product
    (13, 512, 2048, 1, 0),        # sampling one step at a time: re-laying out W would not pay
    (600, 512, 2048, 100, 0),     # large batches: one packed product is efficient already
])
def test_blocked_product_equals_one_product(rows, K, N, steps, expected_width):
    rng = np.random.default_rng(rows + K)
    W = rng.standard_normal((K, N))
    x = rng.standard_normal((rows, K))
    product = lstm.RecurrentProduct(W, rows, steps)
    assert product.width == expected_width
    out = np.full((rows, N), np.nan)
    product(x, out)
    np.testing.assert_allclose(out, x @ W, rtol=1e-12, atol=1e-12)


def test_blocked_product_of_a_transposed_view():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((64, 256)).astype(np.float32)
    product = lstm.RecurrentProduct(W.T, 5, 50)
    out = np.empty((5, 64), np.float32)
    x = rng.standard_normal((5, 256)).astype(np.float32)
    product(x, out)
    np.testing.assert_allclose(out, x @ W.T, rtol=1e-5, atol=1e-5)


def problem(hidden=64, steps=20, batch=3, vocab=9, layers=2):
    layout = ParamLayout.for_model(vocab, layers, hidden)
    flat = init_params(layout, hidden, 0, np.float64)
    rng = np.random.default_rng(1)
    flat += rng.normal(0, 0.1, flat.shape)
    inputs = rng.integers(0, vocab, (batch, steps)).astype(np.int32)
    targets = rng.integers(0, vocab, (batch, steps)).astype(np.int32)
    h0 = rng.normal(0, 0.5, (layers, batch, hidden))
    c0 = rng.normal(0, 0.5, (layers, batch, hidden))
    return layout, flat, inputs, targets, h0, c0


def gradient(layout, flat, inputs, targets, h0, c0):
    grad = np.zeros_like(flat)
    loss, h_last, *_ = lstm.loss_and_grad(layout.views(flat), layout.views(grad), inputs, targets, h0, c0)
    return loss, grad, h_last


def test_loss_and_grad_same_with_blocks_and_without(monkeypatch):
    args = problem()
    assert lstm.RecurrentProduct(np.zeros((64, 256)), 3, 20).width > 0      # the blocked path runs
    assert lstm.RecurrentProduct(np.zeros((256, 64)), 3, 20).width > 0
    blocked = gradient(*args)
    monkeypatch.setattr(lstm, "MIN_STEPS_FOR_BLOCKS", 10 ** 9)
    plain = gradient(*args)
    assert abs(blocked[0] - plain[0]) < 1e-12 * abs(plain[0])
    np.testing.assert_allclose(blocked[1], plain[1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(blocked[2], plain[2], rtol=1e-12, atol=1e-14)


def test_sampled_gradient_check_on_the_blocked_path_float64():
    layout, flat, inputs, targets, h0, c0 = problem()
    _, grad, _ = gradient(layout, flat, inputs, targets, h0, c0)
    rng = np.random.default_rng(5)
    for name in layout.names:
        view = layout.views(flat)[name].reshape(-1)
        analytic = layout.views(grad)[name].reshape(-1)
        for k in rng.choice(view.size, size=min(6, view.size), replace=False):
            saved = view[k]
            view[k] = saved + 1e-5
            plus = gradient(layout, flat, inputs, targets, h0, c0)[0]
            view[k] = saved - 1e-5
            minus = gradient(layout, flat, inputs, targets, h0, c0)[0]
            view[k] = saved
            numeric = (plus - minus) / 2e-5
            assert abs(numeric - analytic[k]) <= 1e-6 * max(1.0, abs(numeric)), (name, k)
