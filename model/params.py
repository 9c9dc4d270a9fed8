"""Parameter layout: every parameter is a named view into one flat vector.

One flat vector makes the optimizer a handful of vectorised operations and lets a whole
model or gradient cross the wire as a single contiguous frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# The most elements in one piece of the vector on the wire by default (1 MiB of float32; a run's
# Config.piece_elements): small enough that a relay chain forwards a piece while the next arrives,
# large enough to keep messages few.
PIECE_ELEMENTS = 1 << 18
MAX_PIECES = 4096       # a cut into more pieces is refused: every message costs each hop its overhead


@dataclass(frozen=True)
class ParamLayout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    piece_elements: int = PIECE_ELEMENTS

    @classmethod
    def for_model(cls, vocab_size: int, layers: int, hidden: int,
                  piece_elements: int = PIECE_ELEMENTS) -> "ParamLayout":
        names, shapes = [], []
        for layer in range(layers):
            fan_in = vocab_size if layer == 0 else hidden
            names += [f"lstm{layer}.W_x", f"lstm{layer}.W_h", f"lstm{layer}.b"]
            shapes += [(fan_in, 4 * hidden), (hidden, 4 * hidden), (4 * hidden,)]
        names += ["head.W", "head.b"]
        shapes += [(hidden, vocab_size), (vocab_size,)]
        return cls(tuple(names), tuple(shapes), piece_elements)

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @cached_property
    def layer_spans(self) -> list[tuple[int, int]]:
        """(start, stop) of each layer's parameters in the flat vector, the head's with the top
        layer's: a layer can compute once its span is in, and backward finishes the top first."""
        starts = [offset for name, offset in zip(self.names, self.offsets) if name.endswith(".W_x")]
        return list(zip(starts, starts[1:] + [self.total]))

    @cached_property
    def pieces(self) -> list[tuple[int, int]]:
        """(start, stop) of each piece the vector travels in: every layer span cut into nearly
        equal parts of at most piece_elements, in order."""
        if self.piece_elements < 1:
            raise ValueError(f"piece_elements must be >= 1 (got {self.piece_elements})")
        counts = [-(-(stop - start) // self.piece_elements) for start, stop in self.layer_spans]
        if sum(counts) > MAX_PIECES:            # said before any is made: the size may come off the wire
            raise ValueError(f"pieces of at most {self.piece_elements} elements cut this model's "
                             f"{self.total} into {sum(counts)} pieces, more than {MAX_PIECES}; "
                             f"raise piece_elements")
        pieces = []
        for (start, stop), parts in zip(self.layer_spans, counts):
            bounds = [start + (stop - start) * k // parts for k in range(parts + 1)]
            pieces += list(zip(bounds, bounds[1:]))
        return pieces

    def layer_pieces(self, layer: int) -> range:
        """The indices of the pieces that make up a layer's span."""
        start, stop = self.layer_spans[layer]
        first = next(k for k, piece in enumerate(self.pieces) if piece[0] == start)
        last = next(k for k, piece in enumerate(self.pieces) if piece[1] == stop)
        return range(first, last + 1)

    @cached_property
    def offsets(self) -> list[int]:
        return [sum(self.sizes[:k]) for k in range(len(self.names))]

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        if flat.shape != (self.total,):
            raise ValueError(f"flat parameter vector has shape {flat.shape}, expected ({self.total},)")
        return {name: flat[offset:offset + size].reshape(shape)
                for name, shape, size, offset in zip(self.names, self.shapes, self.sizes, self.offsets)}

    def flatten(self, arrays: dict[str, np.ndarray], dtype) -> np.ndarray:
        missing = [n for n in self.names if n not in arrays]
        if missing:
            raise KeyError(f"missing parameters: {missing}")
        flat = np.empty(self.total, dtype=dtype)
        views = self.views(flat)
        for name, shape in zip(self.names, self.shapes):
            if arrays[name].shape != shape:
                raise ValueError(f"parameter {name} has shape {arrays[name].shape}, expected {shape}")
            views[name][...] = arrays[name]
        return flat


def init_params(layout: ParamLayout, hidden: int, seed: int, dtype) -> np.ndarray:
    """Uniform(-1/sqrt(H), 1/sqrt(H)) for every weight and bias (PyTorch's LSTM scheme), then
    forget-gate biases set to 1 so early gradients flow through the cell. Drawn in float64
    from numpy's PCG64 seeded with `seed`, in layout order, then cast: float32 and float64
    runs start from the same point."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / math.sqrt(hidden)
    flat = rng.uniform(-bound, bound, size=layout.total)
    views = layout.views(flat)
    for name in layout.names:
        if name.startswith("lstm") and name.endswith(".b"):
            views[name][hidden:2 * hidden] = 1.0
    return flat.astype(dtype)
