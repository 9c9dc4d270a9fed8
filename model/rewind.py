"""Going back: a step source may find that results since some step cannot be trusted (a worker
caught computing wrong numbers, protocol/SPEC.md 5.7) and hand the run a copy of an earlier
state. What the later steps left behind is moved aside, never deleted."""
from __future__ import annotations

from dataclasses import dataclass
import os

import numpy as np

from .checkpoint import history_steps
from .training import TrainState

SUPERSEDED_DIR = "superseded"


@dataclass
class Rewind:
    """Go back to this copy of an earlier state, for this reason (one line, for the log)."""
    state: TrainState
    reason: str


def copy_of(state: TrainState) -> TrainState:
    """A copy that later steps cannot change (every array and the meta copied)."""
    return TrainState(state.config, state.vocab, state.corpus_sha256, state.steps_per_epoch, state.params.copy(),
                      state.square_avg.copy(), state.chunk_h.copy(), state.chunk_c.copy(), state.step,
                      dict(state.extra_meta), None if state.average is None else state.average.copy())


def restore(state: TrainState, earlier: TrainState) -> None:
    """Makes `state` equal `earlier`, in place where others hold the arrays (the optimizer holds
    square_avg); the run's elapsed time is kept."""
    elapsed = state.extra_meta.get("elapsed_s")
    state.params = earlier.params.copy()
    np.copyto(state.square_avg, earlier.square_avg)
    state.chunk_h, state.chunk_c = earlier.chunk_h.copy(), earlier.chunk_c.copy()
    if state.average is not None and earlier.average is not None:
        np.copyto(state.average, earlier.average)
    state.step, state.extra_meta = earlier.step, dict(earlier.extra_meta)
    if elapsed is not None:
        state.extra_meta["elapsed_s"] = elapsed


def set_aside(save_dir: str, step: int, best_step: int | None) -> str:
    """Moves history/ checkpoints of steps after `step`, and a best.npz from one, to superseded/,
    so that no fallback resumes from them and no export ships one. Returns what moved, in words."""
    later = [path for kept, path in sorted(history_steps(save_dir).items()) if kept > step]
    best = os.path.join(save_dir, "best.npz")
    if best_step is not None and best_step > step and os.path.exists(best):
        later.append(best)
    if not later:
        return ""
    aside = os.path.join(save_dir, SUPERSEDED_DIR)
    os.makedirs(aside, exist_ok=True)
    for path in later:
        os.replace(path, os.path.join(aside, os.path.basename(path)))
    return f"{len(later)} checkpoints from later steps moved to {aside}"
