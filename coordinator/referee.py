"""The coordinator's own computation of a chunk group, the third opinion when an audit's results
disagree (protocol/SPEC.md 5.7), and how far two results of one work may differ: not at all
within one arithmetic (model/arithmetic.py), by rounding across two."""
from __future__ import annotations

import numpy as np

from model.arithmetic import arithmetic
from model.corpus import Corpus
from model.masks import MaskSettings
from model.training import ChunkGradients, Contribution, TrainState
from model.wire import wire_round

# Across arithmetics (another BLAS kernel, a worker written from the spec): the largest difference
# allowed, relative to the largest magnitude of the quantity compared. A float32 gradient after 100
# steps of BPTT differs by about 1e-6 of its largest element between OpenBLAS kernels (README).
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}


class Referee:
    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self.arithmetic = arithmetic()
        self.math: tuple | None = None         # (config, ChunkGradients) of the run

    def compute(self, state: TrainState, group: tuple[int, ...]) -> Contribution:
        """What an honest worker returns for `group` at state.step, as the coordinator receives it."""
        config, chunks = state.config, list(group)
        if self.math is None or self.math[0] != config:
            self.math = (config, ChunkGradients(config, state.layout))
        inputs, targets = self.corpus.window(state.step_in_epoch, chunks)
        result = self.math[1].compute(wire_round(state.params, config.wire_dtype), state.step, chunks, inputs,
                                      targets, state.chunk_h[:, chunks], state.chunk_c[:, chunks],
                                      mask_settings=MaskSettings.of(config))
        result.grad = wire_round(result.grad, config.wire_dtype, state.layout.pieces)
        return result


def difference(result: Contribution, reference: Contribution, pieces: list[tuple[int, int]],
               exact: bool) -> str | None:
    """Where `result` differs from `reference` beyond what their arithmetics allow, in words
    (what, which piece, the largest difference), or None where they agree."""
    tolerance = 0.0 if exact else TOLERANCE[reference.grad.dtype.name]

    def beyond(a, b) -> float | None:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if exact and np.array_equal(a, b):
            return None
        largest = float(np.max(np.abs(a - b))) if a.size else 0.0
        return largest if largest > tolerance * max(1.0, float(np.max(np.abs(b))) if b.size else 1.0) or (
            exact and largest > 0) else None

    loss = beyond(result.loss, reference.loss)
    if loss is not None:
        return f"the loss differs by {loss:.3g}"
    for name in ("h", "c"):
        largest = beyond(getattr(result, name), getattr(reference, name))
        if largest is not None:
            return f"the states {name} differ by up to {largest:.3g}"
    scale = float(np.max(np.abs(reference.grad))) if reference.grad.size else 1.0
    for piece, (start, stop) in enumerate(pieces):
        a, b = result.grad[start:stop], reference.grad[start:stop]
        if exact and np.array_equal(a, b):
            continue
        largest = float(np.max(np.abs(a.astype(np.float64) - b)))
        if largest > (0.0 if exact else tolerance * scale):
            where = int(np.argmax(np.abs(a.astype(np.float64) - b)))
            return f"gradient piece {piece} differs by up to {largest:.3g} (element {start + where})"
    return None
