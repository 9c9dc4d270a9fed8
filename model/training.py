"""Training state and the optimizer step shared by the single-process loop and the coordinator."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import functools
import os

import numpy as np

from . import lstm
from .config import Config
from .corpus import Corpus
from .optim import clip_scale, rmsprop, summed_gradient
from .params import ParamLayout, init_params


# Every worker waits while the optimizer runs; its passes are memory-bound and split well:
# RMSprop 8.6 -> 5.6 ms for the default model with 2 threads on our 2-core machine.
UPDATE_THREADS = min(4, os.cpu_count() or 1)
THREADED_UPDATE_MIN_SIZE = 1 << 20


@functools.cache
def _update_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(UPDATE_THREADS, thread_name_prefix="optimizer")


@dataclass
class TrainState:
    """Everything a resumed run needs: parameters, RMSprop accumulators, every chunk's carried state."""
    config: Config
    vocab: str
    corpus_sha256: str
    steps_per_epoch: int
    params: np.ndarray          # (P,) flat, config.dtype
    params_rms: np.ndarray      # (P,) RMSprop's v, same layout
    chunk_h: np.ndarray         # (L, C, H)
    chunk_c: np.ndarray         # (L, C, H)
    step: int = 0
    extra_meta: dict = field(default_factory=dict)
    _scratch: np.ndarray | None = field(default=None, repr=False, compare=False)
    _grad_sum: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def layout(self) -> ParamLayout:
        return ParamLayout.for_model(len(self.vocab), self.config.layers, self.config.hidden)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def step_in_epoch(self) -> int:
        return self.step % self.steps_per_epoch

    @property
    def predictions_per_step(self) -> int:
        return self.config.chunks * self.config.seq_len

    def param_views(self) -> dict[str, np.ndarray]:
        return self.layout.views(self.params)

    def apply_gradient(self, grads: list[np.ndarray], chunk_h: np.ndarray, chunk_c: np.ndarray) -> float:
        """One optimizer step from the gradients of the summed loss over every chunk's window
        (summed in the order given; left unchanged), and the chunks' new carried states.
        Returns the mean gradient's global norm before clipping."""
        executor = _update_executor() if self.params.size >= THREADED_UPDATE_MIN_SIZE else None
        if self._scratch is None or self._scratch.shape != self.params.shape:
            self._scratch, self._grad_sum = np.empty_like(self.params), np.empty_like(self.params)
        grad, norm = summed_gradient(grads, self._grad_sum, executor)
        norm /= self.predictions_per_step
        self.params = rmsprop(self.params, self.params_rms, grad, self.config.lr_at(self.epoch),
                              self.config.rho, self.config.eps, self._scratch,
                              grad_scale=clip_scale(norm, self.config.clip) / self.predictions_per_step,
                              executor=executor)
        self.step += 1
        if self.step_in_epoch == 0:     # a new epoch starts every chunk from a zero state
            self.chunk_h = np.zeros_like(self.chunk_h)
            self.chunk_c = np.zeros_like(self.chunk_c)
        else:
            self.chunk_h, self.chunk_c = chunk_h, chunk_c
        return norm


def new_state(config: Config, corpus: Corpus) -> TrainState:
    dtype = np.dtype(config.dtype)
    layout = ParamLayout.for_model(len(corpus.vocab), config.layers, config.hidden)
    state_shape = (config.layers, config.chunks, config.hidden)
    return TrainState(config=config, vocab=corpus.vocab, corpus_sha256=corpus.sha256,
                      steps_per_epoch=corpus.steps_per_epoch,
                      params=init_params(layout, config.hidden, config.seed, dtype),
                      params_rms=np.zeros(layout.total, dtype), chunk_h=np.zeros(state_shape, dtype),
                      chunk_c=np.zeros(state_shape, dtype))


def dropout_masks(config: Config, step: int, chunk_ids, dtype) -> np.ndarray | None:
    """(L, T, B, H) inverted-dropout multipliers (0 or 1/(1-p)), or None without dropout.

    Each chunk's mask is drawn from its own generator seeded by (seed, step, chunk), so the
    masks, and the trained model, do not depend on how chunks are spread over workers."""
    if config.dropout == 0.0:
        return None
    keep = 1.0 - config.dropout
    masks = np.empty((config.layers, config.seq_len, len(chunk_ids), config.hidden), dtype=dtype)
    for column, chunk in enumerate(chunk_ids):
        draws = np.random.default_rng([config.seed, step, int(chunk)]).random(
            (config.layers, config.seq_len, config.hidden))
        masks[:, :, column, :] = (draws < keep) / keep
    return masks


class ChunkGradients:
    """Loss, gradient and new carried state for a batch of chunks' windows: the worker's math.

    The gradient goes into `out` when given (every element is written), else into a fresh
    vector: the caller knows whether an earlier one is still in a socket's zero-copy queue."""

    def __init__(self, layout: ParamLayout, dtype, blocked: bool = False):
        self.layout = layout
        self.dtype = np.dtype(dtype)
        self.blocked = blocked      # Config.blocked_recurrence: the same in every process of a run

    def compute(self, params: np.ndarray, inputs, targets, h0, c0, masks=None, out=None):
        """Returns (loss_sum, grad_sum (P,), h_T, c_T) for inputs/targets (B, T), states (L, B, H),
        optional dropout masks (L, T, B, H)."""
        grad = np.empty(self.layout.total, dtype=self.dtype) if out is None else out
        loss_sum, h_last, c_last, _, _ = lstm.loss_and_grad(
            self.layout.views(params), self.layout.views(grad), inputs, targets, h0, c0, masks,
            self.blocked)
        return loss_sum, grad, h_last, c_last


def local_step(state: TrainState, corpus: Corpus, gradients: ChunkGradients) -> tuple[float, float]:
    """The single-process step: all chunks in one batch. Returns (mean loss, gradient norm)."""
    inputs, targets = corpus.window(state.step_in_epoch)
    masks = dropout_masks(state.config, state.step, range(state.config.chunks), state.params.dtype)
    loss_sum, grad, h_last, c_last = gradients.compute(
        state.params, inputs, targets, state.chunk_h, state.chunk_c, masks)
    norm = state.apply_gradient([grad], h_last, c_last)
    return loss_sum / state.predictions_per_step, norm
