"""Checkpoint format, round trip, atomic writes, corruption and fallback."""
import json
import os

import numpy as np
import pytest

from model import checkpoint
from model.checkpoint import CheckpointError, load_latest_state, load_state, save_checkpoint
from model.config import Config
from model.corpus import make_corpus
from model.training import new_state
from helpers import generated_text, local_steps


def trained_state(steps=2, dtype="float64"):
    corpus, config = make_corpus(generated_text(3000), Config(layers=2, hidden=8, chunks=3, seq_len=10,
                                                              dtype=dtype))
    state = new_state(config, corpus)
    local_steps(state, corpus, steps)
    return state


def test_round_trip_and_format(tmp_path):
    state = trained_state()
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, state)
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
        for key in ("format", "vocab", "layers", "hidden", "seq_len", "chunks", "chunk_len", "val_fraction",
                    "lr", "rho", "eps", "clip", "dtype", "seed", "step", "epoch", "corpus_sha256"):
            assert key in meta, key
        assert meta["format"] == "charlstm/1" and meta["step"] == 2
        assert archive["param/lstm0.W_x"].shape == (len(state.vocab), 32)
        assert archive["param/lstm1.W_h"].shape == (8, 32)
        assert archive["rmsprop/head.W"].shape == (8, len(state.vocab))
        assert archive["chunks/h"].shape == (2, 3, 8)
        assert int(archive["chunks/step_in_epoch"]) == 2
    loaded = load_state(path)
    assert loaded.step == 2 and loaded.config == state.config
    np.testing.assert_array_equal(loaded.params, state.params)
    np.testing.assert_array_equal(loaded.square_avg, state.square_avg)
    np.testing.assert_array_equal(loaded.chunk_c, state.chunk_c)


def test_write_that_dies_half_way_leaves_the_old_file(tmp_path, monkeypatch):
    state = trained_state(1)
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, state)
    before = open(path, "rb").read()

    def dying_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.np, "savez", dying_savez)
    state.step = 7
    with pytest.raises(OSError):
        save_checkpoint(path, state)
    assert open(path, "rb").read() == before
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_corrupt_checkpoint_is_named_and_history_is_used(tmp_path):
    state = trained_state(1)
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, state)
    state.step = 2
    save_checkpoint(path, state)
    os.unlink(path)
    with open(path, "wb") as handle:      # a new, truncated file in place of the latest
        handle.write(open(tmp_path / "history" / "checkpoint-000000002.npz", "rb").read()[:500])
    with pytest.raises(CheckpointError, match="checkpoint.npz is corrupt or truncated"):
        load_state(path)
    logged = []
    recovered, source = load_latest_state(str(tmp_path), logged.append)
    assert recovered.step == 2 and source.endswith("checkpoint-000000002.npz")
    assert "corrupt" in logged[0] and "delete it" not in logged[0] and "next older" in logged[0]


def test_history_keeps_the_last_three(tmp_path):
    state = trained_state(1)
    for step in range(5):
        state.step = step
        save_checkpoint(str(tmp_path / "checkpoint.npz"), state)
    assert sorted(os.listdir(tmp_path / "history")) == [
        "checkpoint-000000002.npz", "checkpoint-000000003.npz", "checkpoint-000000004.npz"]


def test_a_full_disk_at_a_periodic_checkpoint_does_not_stop_training(tmp_path, monkeypatch):
    from model import run as run_module
    from model.config import Config
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(3000), encoding="utf-8")
    logged = []
    training = run_module.TrainingRun(Config(hidden=8, chunks=3, seq_len=10, dtype="float64"), str(corpus),
                                      str(tmp_path / "run"), steps=4, checkpoint_every=1, log=logged.append)
    real_save = run_module.save_checkpoint

    def full_disk(path, state, keep=3):
        if state.step == 2:
            raise OSError(28, "No space left on device")
        real_save(path, state, keep)
    monkeypatch.setattr(run_module, "save_checkpoint", full_disk)
    for _ in range(4):
        ((loss, norm),) = local_steps(training.state, training.corpus)
        training.record_step(loss, norm, 0.1)
    assert any("No space left on device" in line and "training goes on" in line for line in logged)
    assert load_state(str(tmp_path / "run" / "checkpoint.npz")).step == 4
