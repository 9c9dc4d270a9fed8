"""DropConnect on the recurrent weights (Config.weight_drop, SPEC.md 4.2): a float64 gradient check
through the dropped W_h, the masks exactly as specified and shared by every chunk of a step (so
1 worker, N workers and one process agree), and streaming hooks that see the final gradient."""
import numpy as np
import pytest

import helpers
from model.config import Config
from model.params import ParamLayout, init_params
from model.masks import MaskSettings
from model.training import ChunkGradients
from test_lstm_math import centred_differences, relative_error

VOCAB, LAYERS, HIDDEN, CHUNKS, STEPS = 7, 2, 5, 4, 6


def problem(weight_drop=0.3):
    config = Config(layers=LAYERS, hidden=HIDDEN, seq_len=STEPS, chunks=CHUNKS, dtype="float64",
                    recurrent_form="single", weight_drop=weight_drop)
    layout = ParamLayout.for_model(VOCAB, LAYERS, HIDDEN)
    rng = np.random.default_rng(1)
    params = init_params(layout, HIDDEN, 0, np.float64) + rng.normal(0, 0.3, layout.total)
    inputs, targets = (rng.integers(0, VOCAB, (CHUNKS, STEPS)).astype(np.int32) for _ in range(2))
    h0, c0 = (rng.normal(0, 0.5, (LAYERS, CHUNKS, HIDDEN)) for _ in range(2))
    return config, layout, ChunkGradients(config, layout), params, inputs, targets, h0, c0


def compute(gradients, params, chunks, inputs, targets, h0, c0, config, **hooks):
    return gradients.compute(params, 3, chunks, inputs, targets, h0, c0, mask_settings=MaskSettings(11, 0.2, "step", config.weight_drop), **hooks)


def test_gradient_check_through_the_dropped_recurrent_weights_float64():
    config, layout, gradients, params, inputs, targets, h0, c0 = problem()
    chunks = list(range(CHUNKS))
    grad = compute(gradients, params, chunks, inputs, targets, h0, c0, config).grad
    numeric = centred_differences(lambda: compute(gradients, params, chunks, inputs, targets, h0, c0, config).loss,
                                  params)
    for name in layout.names:
        error = relative_error(layout.views(grad)[name], layout.views(numeric)[name])
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


def test_the_masks_are_the_spec_s_and_change_the_result():
    masks = MaskSettings(11, weight_drop=0.3).weight_drop_masks(3, LAYERS, HIDDEN, np.float64)
    for layer, mask in enumerate(masks):
        draws = np.random.default_rng([11, 3, 87, layer]).random((HIDDEN, 4 * HIDDEN))
        assert np.array_equal(mask, (draws < 0.7) / 0.7)
    assert MaskSettings(11).weight_drop_masks(3, LAYERS, HIDDEN, np.float64) is None
    config, _, gradients, params, inputs, targets, h0, c0 = problem()
    plain_config, _, plain, *_ = problem(0.0)
    chunks = list(range(CHUNKS))
    assert compute(gradients, params, chunks, inputs, targets, h0, c0, config).loss != \
        compute(plain, params, chunks, inputs, targets, h0, c0, plain_config).loss


def test_chunk_groups_sum_to_the_whole_batch_and_hooks_see_the_final_gradient():
    config, layout, gradients, params, inputs, targets, h0, c0 = problem()
    whole = compute(gradients, params, list(range(CHUNKS)), inputs, targets, h0, c0, config)
    total = np.zeros_like(whole.grad)
    for group in ([0, 1], [2, 3]):
        total += compute(gradients, params, group, inputs[group], targets[group], h0[:, group], c0[:, group],
                         config).grad
    assert relative_error(total, whole.grad) < 1e-12
    seen, waited = {}, []
    grad = np.empty_like(whole.grad)
    streamed = compute(gradients, params, list(range(CHUNKS)), inputs, targets, h0, c0, config, out=grad,
                       await_layer=waited.append,
                       layer_done=lambda l: seen.update({l: layout.views(grad)[f"lstm{l}.W_h"].copy()}))
    assert waited == [0, 1] and sorted(seen) == [0, 1]
    assert np.array_equal(streamed.grad, whole.grad)
    for layer in seen:
        assert np.array_equal(seen[layer], layout.views(whole.grad)[f"lstm{layer}.W_h"])


@pytest.mark.timeout(240)
def test_workers_agree_with_one_process(corpus, tmp_path):
    results = {}
    for workers in (0, 2):
        save_dir = str(tmp_path / f"w{workers}")
        helpers.train(corpus, save_dir, "--workers", workers, "--steps", 4, "--weight-drop", "0.3", "--dropout", "0.2")
        results[workers] = helpers.params_of(save_dir)
    assert helpers.relative(results[2], results[0]) < 1e-10
