"""Locked dropout (Config.dropout_form 'window', SPEC.md 4.2): one mask per chunk and window shared
by its time steps; a float64 gradient check through it; 1 vs N workers agree, a resumed run equals
an uninterrupted one and keeps its checkpoint's form; model and protocol name the same forms."""
import numpy as np

import helpers
from model.config import Config
from model.masks import DROPOUT_FORMS, MaskSettings
from model.params import ParamLayout, init_params
from model.training import ChunkGradients
from protocol.schema import MASK_FORMS
from test_lstm_math import centred_differences, relative_error

VOCAB, LAYERS, HIDDEN, CHUNKS, STEPS = 7, 2, 5, 3, 6
LOCKED = MaskSettings(seed=11, dropout=0.4, dropout_form="window")


def test_a_window_s_time_steps_share_one_mask_and_the_next_window_draws_another():
    masks = LOCKED.dropout_masks(3, [0, 1, 2], (LAYERS, STEPS, HIDDEN), np.float64)    # (L, T, B, H)
    assert all(np.array_equal(masks[:, t], masks[:, 0]) for t in range(STEPS))
    assert (masks == 0).any() and len({masks[:, 0, b].tobytes() for b in range(3)}) == 3   # chunks differ
    assert not np.array_equal(masks, LOCKED.dropout_masks(4, [0, 1, 2], (LAYERS, STEPS, HIDDEN), np.float64))
    per_step = MaskSettings(seed=11, dropout=0.4).dropout_masks(3, [0, 1, 2], (LAYERS, STEPS, HIDDEN), np.float64)
    assert not all(np.array_equal(per_step[:, t], per_step[:, 0]) for t in range(STEPS))


def test_gradient_check_through_locked_dropout_float64():
    config = Config(layers=LAYERS, hidden=HIDDEN, seq_len=STEPS, chunks=CHUNKS, dtype="float64",
                    recurrent_form="single", dropout=0.4, dropout_form="window")
    layout = ParamLayout.for_model(VOCAB, LAYERS, HIDDEN)
    rng = np.random.default_rng(2)
    params = init_params(layout, HIDDEN, 0, np.float64) + rng.normal(0, 0.3, layout.total)
    inputs, targets = (rng.integers(0, VOCAB, (CHUNKS, STEPS)).astype(np.int32) for _ in range(2))
    h0, c0 = (rng.normal(0, 0.5, (LAYERS, CHUNKS, HIDDEN)) for _ in range(2))
    gradients, chunks = ChunkGradients(config, layout), list(range(CHUNKS))

    def run():
        return gradients.compute(params, 3, chunks, inputs, targets, h0, c0, mask_settings=MaskSettings.of(config))
    grad, numeric = run().grad, centred_differences(lambda: run().loss, params)
    for name in layout.names:
        error = relative_error(layout.views(grad)[name], layout.views(numeric)[name])
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


def test_workers_agree_with_one_process_and_a_resume_keeps_the_checkpoint_s_form(corpus, tmp_path):
    results = {}
    for name, workers, form in (("w0", 0, "window"), ("w2", 2, "window"), ("per_step", 0, "step")):
        save_dir = str(tmp_path / name)
        helpers.train(corpus, save_dir, "--workers", workers, "--steps", 4, "--dropout", "0.3", "--dropout-form", form)
        results[name] = helpers.params_of(save_dir)
    assert helpers.relative(results["w2"], results["w0"]) < 1e-10       # 1 vs N workers, float64
    assert not np.array_equal(results["w0"], results["per_step"])
    resumed = str(tmp_path / "resumed")
    helpers.train(corpus, resumed, "--workers", 2, "--steps", 2, "--dropout", "0.3", "--dropout-form", "window")
    helpers.train(corpus, resumed, "--workers", 0, "--steps", 4)         # no flag: the checkpoint's form
    assert helpers.relative(helpers.params_of(resumed), results["w0"]) < 1e-10


def test_model_and_protocol_name_the_same_forms_and_an_old_checkpoint_s_config_means_per_step():
    assert DROPOUT_FORMS == MASK_FORMS
    old = {k: v for k, v in Config(dropout=0.3).to_dict().items() if k != "dropout_form"}
    assert Config.from_dict(old).dropout_form == "step"
