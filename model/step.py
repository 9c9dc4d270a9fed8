"""One optimizer step, wherever its gradients come from: a step source gathers every chunk's
contribution (InProcessSource, below: every chunk in one batch, no sockets; or the coordinator's
socket loop, coordinator/service.py), and apply_step sums, clips and applies them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .average import ParamAverage
from .corpus import Corpus
from .masks import MaskSettings
from .optim import RMSprop
from .rewind import Rewind
from .training import ChunkGradients, Contribution, TrainState
from .wire import narrow_sums, wire_round, wire_sum


@dataclass
class Gathered:
    """One step's results: every chunk group's contribution (loss, new states), the gradients to
    add in the order to add them (ascending chunks; the source decides how they were formed, e.g.
    a partial sum standing for several groups), and figures for metrics.jsonl."""
    contributions: dict[tuple[int, ...], Contribution]
    gradients: list[np.ndarray]
    figures: dict


class StepSource(Protocol):
    def gather(self, state: TrainState, stopping: Callable[[], bool]) -> Gathered | Rewind | None:
        """The contributions of every chunk for state.step; None if stopping() became true first."""

    def params_out(self, state: TrainState) -> np.ndarray:
        """Where the optimizer may write the new parameters."""

    def close(self, reason: str) -> None:
        """The run is over (reason says why)."""


class InProcessSource:
    """Every chunk as one batch in this process: the reference path."""

    def __init__(self, state: TrainState, corpus: Corpus):
        self.corpus = corpus
        self.gradients = ChunkGradients(state.config, state.layout)
        self.all_chunks = tuple(range(state.config.chunks))

    def gather(self, state: TrainState, stopping) -> Gathered:
        inputs, targets = self.corpus.window(state.step_in_epoch)
        wire = state.config.wire_dtype          # rounded as a worker's would be, both ways
        contribution = self.gradients.compute(wire_round(state.params, wire), state.step, self.all_chunks,
                                              inputs, targets, state.chunk_h, state.chunk_c,
                                              mask_settings=MaskSettings.of(state.config))
        contribution.grad = wire_round(contribution.grad, wire, state.layout.pieces)
        return Gathered({self.all_chunks: contribution}, [contribution.grad], {"workers": 0})

    def params_out(self, state: TrainState) -> np.ndarray:
        return state.params             # nothing else holds it: update in place

    def close(self, reason: str) -> None:
        pass


def apply_step(state: TrainState, optimizer: RMSprop, gathered: Gathered,
               new_params: np.ndarray, average: ParamAverage | None = None) -> tuple[float, float]:
    """Sums the gathered gradients in their given order (never arrival order; with chain_sums
    'wire', rounding each partial sum as a relay chain does), clips, applies
    RMSprop into new_params, keeps the chunks' new states and, with an average, moves it toward
    the new parameters. Returns (mean loss, grad norm)."""
    contributions = gathered.contributions
    if not gathered.gradients or any(g is None for g in gathered.gradients):
        raise RuntimeError("a step's gradients are incomplete")
    groups = sorted(contributions)
    chunk_h, chunk_c = state.chunk_h.copy(), state.chunk_c.copy()       # (L, C, H)
    for group in groups:
        chunk_h[:, list(group)] = contributions[group].h
        chunk_c[:, list(group)] = contributions[group].c
    loss = sum(contributions[g].loss for g in groups) / state.predictions_per_step
    config, gradients = state.config, gathered.gradients
    if narrow_sums(config) and len(gradients) > 1:      # as a relay chain of them adds them
        gradients = [wire_sum(gradients, config.wire_dtype, state.layout.pieces)]
    norm = optimizer.step(state.params, gradients, state.predictions_per_step, config.lr_at(state.epoch),
                          out=new_params)
    state.advance(new_params, chunk_h, chunk_c)
    if average is not None and state.average is not None:
        average.update(state.average, state.params)
    return loss, norm
