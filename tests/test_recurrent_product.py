"""The per-step recurrent product cut into column blocks gives the same numbers as one product."""
import os

import numpy as np
import pytest

from model import lstm, recurrent
from model.params import ParamLayout, init_params
from model.recurrent import RecurrentProduct, block_width


@pytest.mark.parametrize("rows, K, N, steps, expected", [
    (13, 512, 2048, 100, 32),     # forward, 2 workers' share of the default batch
    (25, 2048, 512, 100, 16),     # backward (W_h.T), the whole default batch
    (13, 2048, 512, 100, 32),
    (7, 600, 500, 100, 0),        # N not a multiple of any block width: one product
    (13, 512, 2048, 1, 0),        # sampling one step at a time: re-laying out W would not pay
    (600, 512, 2048, 100, 0),     # large batches: one packed product is efficient already
    (13, 64, 256, 100, 0),        # a small W packs cheaply
])
def test_block_width_rule(rows, K, N, steps, expected):
    assert block_width(rows, K, N, steps) == expected


@pytest.mark.parametrize("rows, K, N, width", [(13, 512, 2048, 32), (25, 2048, 512, 16), (3, 64, 256, 32),
                                               (5, 40, 48, 0)])
def test_blocked_product_equals_one_product(rows, K, N, width):
    rng = np.random.default_rng(rows + K)
    W = rng.standard_normal((K, N))
    x = rng.standard_normal((rows, K))
    product = RecurrentProduct(W, rows, 100, width=width)
    out = np.full((rows, N), np.nan)
    product(x, out)
    np.testing.assert_allclose(out, x @ W, rtol=1e-12, atol=1e-12)


def test_blocked_product_of_a_transposed_view():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((64, 256)).astype(np.float32)
    product = RecurrentProduct(W.T, 5, 50, width=16)
    out = np.empty((5, 64), np.float32)
    x = rng.standard_normal((5, 256)).astype(np.float32)
    product(x, out)
    np.testing.assert_allclose(out, x @ W.T, rtol=1e-5, atol=1e-5)


def test_width_that_does_not_divide_fails_loudly():
    with pytest.raises(ValueError, match="does not divide"):
        RecurrentProduct(np.zeros((8, 48)), 2, 100, width=32)


def test_the_form_follows_the_run_setting_never_timing():
    forward, backward = np.zeros((512, 2048), np.float32), np.zeros((2048, 512), np.float32)
    assert RecurrentProduct(forward, 13, 100, blocked=True).width == 32
    assert RecurrentProduct(backward, 25, 100, blocked=True).width == 16
    assert RecurrentProduct(forward, 13, 100, blocked=False).width == 0
    assert RecurrentProduct(forward, 13, 1, blocked=True).width == 0     # too few steps to pay


@pytest.mark.parametrize("coretype, expected", [("SkylakeX", "blocks"), ("Haswell", "single"),
                                                ("Zen", "single"), ("COOPERLAKE", "blocks")])
def test_openblas_coretype_decides_the_auto_form(monkeypatch, coretype, expected):
    monkeypatch.setenv("OPENBLAS_CORETYPE", coretype)
    assert recurrent.form_for_this_cpu() == expected


def test_resolve_form_keeps_what_was_asked_or_recorded():
    assert recurrent.resolve_form("single", recorded="blocks") == "single"
    assert recurrent.resolve_form("auto", recorded="blocks") == "blocks"
    assert recurrent.resolve_form("auto") in ("blocks", "single")


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


def gradient(layout, flat, inputs, targets, h0, c0, blocked=True):
    grad = np.zeros_like(flat)
    loss, h_last, *_ = lstm.loss_and_grad(layout.views(flat), layout.views(grad), inputs, targets,
                                          h0, c0, blocked=blocked)
    return loss, grad, h_last


@pytest.fixture
def blocks_everywhere(monkeypatch):
    """Small test models take the blocked path when the run asks for it."""
    monkeypatch.setattr(recurrent, "MIN_WEIGHTS_FOR_BLOCKS", 0)
    assert RecurrentProduct(np.zeros((64, 256)), 3, 20, blocked=True).width == 32
    assert RecurrentProduct(np.zeros((256, 64)), 3, 20, blocked=True).width == 32


def test_loss_and_grad_same_with_blocks_and_without(blocks_everywhere):
    args = problem()
    blocked = gradient(*args)
    plain = gradient(*args, blocked=False)
    assert abs(blocked[0] - plain[0]) < 1e-12 * abs(plain[0])
    np.testing.assert_allclose(blocked[1], plain[1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(blocked[2], plain[2], rtol=1e-12, atol=1e-14)


def test_sampled_gradient_check_on_the_blocked_path_float64(blocks_everywhere):
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


def test_a_run_s_bits_depend_only_on_its_recorded_form(tmp_path):
    """Each form forced in turn (12 rows per worker: the two forms round differently there): the
    checkpoint records it, workers compute with it, reruns and a resume under "auto" repeat it
    bit for bit, and the other form gives other bits."""
    import helpers
    from model.checkpoint import load_state
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(helpers.generated_text(6000), encoding="utf-8")
    shape = ["--hidden", "256", "--chunks", "24", "--seq-len", "20", "--dtype", "float32",
             "--workers", "2", "--checkpoint-every", "1"]

    def run(name, *flags):
        save_dir = str(tmp_path / name)
        helpers.run_script("train_local.py", "--corpus", corpus, "--save-dir", save_dir, "--no-progress",
                           *shape, *flags)
        return load_state(os.path.join(save_dir, "checkpoint.npz"))

    blocks = run("blocks", "--steps", 4, "--recurrent-form", "blocks")
    assert blocks.config.recurrent_form == "blocks"
    np.testing.assert_array_equal(run("again", "--steps", 4, "--recurrent-form", "blocks").params, blocks.params)
    run("resumed", "--steps", 2, "--recurrent-form", "blocks")
    resumed = run("resumed", "--steps", 4)               # auto: keeps the recorded form
    assert resumed.config.recurrent_form == "blocks"
    np.testing.assert_array_equal(resumed.params, blocks.params)
    single = run("single", "--steps", 4, "--recurrent-form", "single")
    assert single.config.recurrent_form == "single"
    assert not np.array_equal(single.params, blocks.params)
    np.testing.assert_allclose(single.params, blocks.params, rtol=1e-3, atol=1e-4)


def test_a_worker_computes_with_the_run_s_form_whatever_its_cpu(monkeypatch):
    from model.config import Config
    from worker.compute import WorkerCompute
    for cpu_rule in ("blocks", "single"):
        monkeypatch.setattr(recurrent, "form_for_this_cpu", lambda: cpu_rule)
        for form in ("blocks", "single"):
            config = Config(hidden=8, chunks=2, seq_len=4, recurrent_form=form).to_dict()
            assert WorkerCompute(config, "abc").gradients.blocked == (form == "blocks")
