"""What goes out for a step: a `work` message for a chunk group (SPEC.md 4), and the
parameters on the wire, narrowed once per step (SPEC.md 4.3-4.4)."""
from __future__ import annotations

import numpy as np

from model.corpus import Corpus
from model.masks import MaskSettings
from model.training import TrainState
from model.wire import WIRE_TAGS, narrow, sum_tag
from protocol import Message


def work_message(state: TrainState, corpus: Corpus, token: int, step: int, group: tuple[int, ...],
                 links: dict) -> Message:
    """What to compute (the group's window and states), what fixes its dropout masks, and its
    relay chain links (SPEC.md 4.5; chain.NO_LINKS off any chain)."""
    config, chunk_ids = state.config, list(group)
    inputs, targets = corpus.window(state.step_in_epoch, chunk_ids)
    fields = {"token": token, "step": step, "chunks": chunk_ids, **MaskSettings.of(config).fields(),
              "wire": WIRE_TAGS[config.wire_dtype] or np.dtype(config.dtype).str, "sum_wire": sum_tag(config),
              **links}
    return Message("work", fields, {"h": state.chunk_h[:, chunk_ids], "c": state.chunk_c[:, chunk_ids],
                                    "inputs": inputs, "targets": targets})


class WireParams:
    """The current parameters as they travel, piece by piece, narrowed once per step for all."""

    def __init__(self, pieces: list[tuple[int, int]]):
        self.pieces = pieces
        self.narrowed: tuple[int, np.ndarray | None] = (-1, None)

    def of(self, state: TrainState) -> list[np.ndarray]:
        if self.narrowed[0] != state.step:
            self.narrowed = (state.step, narrow(state.params, state.config.wire_dtype))
        return [self.narrowed[1][start:stop] for start, stop in self.pieces]
