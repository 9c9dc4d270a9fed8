"""What fixes a step's random masks (protocol/SPEC.md 4.2), and the masks: inverted dropout on each
layer's output, drawn afresh for every time step or once per window (AWD-LSTM's locked dropout),
and DropConnect on the recurrent weights (weight drop), with the views of the parameters that the
math reads through it. Every mask is a pure function of the settings, the step and the chunk, so
no result depends on how chunks are spread over workers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

# Config.dropout_form: "step" draws a mask for every time step of a window; "window" one per window,
# every time step of it sharing the same dropped units (a different mask in the next window).
DROPOUT_FORMS = ("step", "window")
WEIGHT_DROP_STREAM = 87        # a 4th seed word: weight-drop masks never share a stream with dropout's


@dataclass(frozen=True)
class MaskSettings:
    """The four values a step's masks are drawn from; a `work` message carries each of them."""
    seed: int
    dropout: float = 0.0
    dropout_form: str = "step"
    weight_drop: float = 0.0

    @classmethod
    def of(cls, values) -> "MaskSettings":
        """From anything holding the four by name: a Config (attributes), a `work` message (items)."""
        get = values.__getitem__ if hasattr(values, "__getitem__") else lambda name: getattr(values, name)
        return cls(**{field.name: get(field.name) for field in dataclasses.fields(cls)})

    def fields(self) -> dict:
        """As a `work` message's fields name them (SPEC.md 4)."""
        return dataclasses.asdict(self)

    def dropout_masks(self, step: int, chunk_ids, shape: tuple[int, int, int], dtype) -> np.ndarray | None:
        """(L, T, B, H) inverted-dropout multipliers (0 or 1/(1-p)) for shape (L, T, H), or None
        without dropout. Each chunk's from its own generator seeded by (seed, step, chunk): draws
        of shape (L, T, H), or of (L, H) shared by all T time steps in the "window" form."""
        if self.dropout == 0.0:
            return None
        layers, seq_len, hidden = shape
        keep = 1.0 - self.dropout
        masks = np.empty((layers, seq_len, len(chunk_ids), hidden), dtype=dtype)
        for column, chunk in enumerate(chunk_ids):
            generator = np.random.default_rng([self.seed, step, int(chunk)])
            if self.dropout_form == "window":
                masks[:, :, column, :] = ((generator.random((layers, hidden)) < keep) / keep)[:, None, :]
            else:
                masks[:, :, column, :] = (generator.random(shape) < keep) / keep
        return masks

    def weight_drop_masks(self, step: int, layers: int, hidden: int, dtype) -> list[np.ndarray] | None:
        """Each layer's (H, 4H) DropConnect multipliers for W_h at a step (0 or 1/(1-q)), or None
        without weight drop: layer l's from numpy.random.default_rng([seed, step, 87, l]), the
        same for every chunk of the step."""
        if self.weight_drop == 0.0:
            return None
        keep = 1.0 - self.weight_drop
        return [((np.random.default_rng([self.seed, step, WEIGHT_DROP_STREAM, layer]).random((hidden, 4 * hidden))
                  < keep) / keep).astype(dtype) for layer in range(layers)]


def dropping_weights(views: dict, grads: dict, masks: list[np.ndarray], await_layer, layer_done):
    """The parameter views the math reads, each W_h replaced by its dropped copy once its layer's
    parameters are in, and hooks that turn the dropped copy's gradient into W_h's (times the
    mask) before a layer's gradient is passed on. Returns (views, await_layer, layer_done)."""
    views = dict(views)
    source = dict(views)

    def awaited(layer: int) -> None:
        if await_layer is not None:
            await_layer(layer)
        name = f"lstm{layer}.W_h"
        views[name] = source[name] * masks[layer]

    def done(layer: int) -> None:
        grads[f"lstm{layer}.W_h"] *= masks[layer]
        if layer_done is not None:
            layer_done(layer)
    return views, awaited, done
