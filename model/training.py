"""What a training run is made of: its state (what a checkpoint holds) and the math that turns a
batch of chunks' windows into loss, gradient and new carried states."""
from __future__ import annotations

from dataclasses import dataclass, field
import time

import numpy as np

from . import lstm
from .average import debiased
from .config import Config
from .corpus import Corpus
from .masks import MaskSettings, dropping_weights
from .params import ParamLayout, init_params
from .recurrent import resolve_form
from .wire import WIRE_TAGS


@dataclass
class TrainState:
    """Everything a resumed run needs: parameters, RMSprop's square_avg, every chunk's carried state."""
    config: Config
    vocab: str
    corpus_sha256: str
    steps_per_epoch: int
    params: np.ndarray          # (P,) flat, config.dtype
    square_avg: np.ndarray      # (P,) RMSprop's running mean of squared gradients, same layout
    chunk_h: np.ndarray         # (L, C, H)
    chunk_c: np.ndarray         # (L, C, H)
    step: int = 0
    extra_meta: dict = field(default_factory=dict)
    average: np.ndarray | None = None   # (P,) the parameters' moving average, with Config.ema_decay > 0

    @property
    def layout(self) -> ParamLayout:
        return ParamLayout.for_model(len(self.vocab), self.config.layers, self.config.hidden,
                                    self.config.piece_elements)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def step_in_epoch(self) -> int:
        return self.step % self.steps_per_epoch

    @property
    def predictions_per_step(self) -> int:
        return self.config.chunks * self.config.seq_len

    def averaged(self) -> np.ndarray | None:
        """The parameters' moving average, debiased (model/average.py), or None without one."""
        if self.average is None:
            return None
        return debiased(self.average, self.config.ema_decay, self.step - self.extra_meta.get("average_from", 0))

    def param_views(self) -> dict[str, np.ndarray]:
        return self.layout.views(self.params)

    def advance(self, params: np.ndarray, chunk_h: np.ndarray, chunk_c: np.ndarray) -> None:
        """After an optimizer step: the new parameters and carried states; a new epoch starts
        every chunk from a zero state."""
        self.params = params
        self.step += 1
        if self.step_in_epoch == 0:
            self.chunk_h, self.chunk_c = np.zeros_like(chunk_h), np.zeros_like(chunk_c)
        else:
            self.chunk_h, self.chunk_c = chunk_h, chunk_c


def new_state(config: Config, corpus: Corpus) -> TrainState:
    dtype = np.dtype(config.dtype)
    layout = ParamLayout.for_model(len(corpus.vocab), config.layers, config.hidden, config.piece_elements)
    state_shape = (config.layers, config.chunks, config.hidden)
    params = init_params(layout, config.hidden, config.seed, dtype)
    return TrainState(config=config, vocab=corpus.vocab, corpus_sha256=corpus.sha256,
                      steps_per_epoch=corpus.steps_per_epoch, params=params,
                      square_avg=np.zeros(layout.total, dtype), chunk_h=np.zeros(state_shape, dtype),
                      chunk_c=np.zeros(state_shape, dtype),
                      average=np.zeros_like(params) if config.ema_decay else None,
                      extra_meta={"average_from": 0} if config.ema_decay else {})


def shape_sizes(config: Config, layout: ParamLayout) -> dict:
    """The sizes behind the wire protocol's shape symbols (protocol/SPEC.md, section 4) for a
    run, and its float dtype: what coordinator and workers check every array against."""
    sizes = {"P": layout.total, "L": config.layers, "H": config.hidden, "T": config.seq_len,
             "pieces": [stop - start for start, stop in layout.pieces], "float": np.dtype(config.dtype).str}
    if WIRE_TAGS[config.wire_dtype]:
        sizes["wire"] = WIRE_TAGS[config.wire_dtype]
    return sizes


@dataclass
class Contribution:
    """One chunk group's part of a step: summed loss, gradient of the summed loss, new states."""
    loss: float
    grad: np.ndarray | None     # (P,); None until a push's streamed pieces are assembled
    h: np.ndarray           # (L, b, H)
    c: np.ndarray           # (L, b, H)
    compute_s: float


class ChunkGradients:
    """Loss, gradient and new carried state for a batch of chunks' windows: the worker's math."""

    def __init__(self, config: Config, layout: ParamLayout):
        self.config = config
        self.layout = layout
        self.dtype = np.dtype(config.dtype)
        # a training run resolves "auto" once and records it; only stand-alone use resolves here
        self.blocked = resolve_form(config.recurrent_form) == "blocks"

    def compute(self, params: np.ndarray, step: int, chunk_ids, inputs, targets, h0, c0, *,
                mask_settings: MaskSettings, out: np.ndarray | None = None, await_layer=None,
                layer_done=None) -> Contribution:
        """inputs/targets (B, T) of the chunks chunk_ids at a step, states (L, B, H); the mask
        settings determine the dropout and weight-drop masks. Every element of the gradient is
        written, into out when given. await_layer and layer_done stream parameters in and gradients out, layer
        by layer (lstm.loss_and_grad); compute_s includes any time spent in them."""
        started = time.perf_counter()
        grad = np.empty(self.layout.total, dtype=self.dtype) if out is None else out
        config = self.config
        masks = mask_settings.dropout_masks(step, chunk_ids, (config.layers, config.seq_len, config.hidden),
                                            self.dtype)
        views, grads = self.layout.views(params), self.layout.views(grad)
        dropped = mask_settings.weight_drop_masks(step, config.layers, config.hidden, self.dtype)
        if dropped is not None:
            views, await_layer, layer_done = dropping_weights(views, grads, dropped, await_layer, layer_done)
        loss_sum, h_last, c_last, _, _ = lstm.loss_and_grad(
            views, grads, inputs, targets, h0, c0, masks, self.blocked, await_layer, layer_done)
        return Contribution(loss_sum, grad, h_last, c_last, time.perf_counter() - started)
