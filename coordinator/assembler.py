"""Gradients that arrive in pieces (protocol/SPEC.md 4.4), assembled per worker: a plain
object, no sockets. The parameter server decides which pieces are worth keeping."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.wire import widen


@dataclass
class HeldGradient:
    step: int
    group: tuple[int, ...]
    grad: np.ndarray                # (P,) the run's dtype
    arrived: set[int] = field(default_factory=set)


class GradientAssembler:
    """For each token, the pieces of one work's gradient at most: memory stays bounded by
    one gradient per registered worker whatever the workers send."""

    def __init__(self, pieces: list[tuple[int, int]], dtype):
        self.pieces = pieces            # (start, stop) of each piece in the flat vector
        self.dtype = np.dtype(dtype)
        self.held: dict[int, HeldGradient] = {}

    def keep(self, token: int, step: int, group: tuple[int, ...], piece: int, array: np.ndarray) -> None:
        """Widens a piece into place; a piece of another work than the one held replaces it."""
        held = self.held.get(token)
        if held is None or (held.step, held.group) != (step, group):
            held = self.held[token] = HeldGradient(step, group, np.empty(self.pieces[-1][1], self.dtype))
        start, stop = self.pieces[piece]
        held.grad[start:stop] = widen(array, self.dtype)
        held.arrived.add(piece)

    def complete(self, token: int) -> bool:
        held = self.held.get(token)
        return held is not None and len(held.arrived) == len(self.pieces)

    def take(self, token: int, step: int, group: tuple[int, ...]) -> np.ndarray | None:
        """The whole gradient of that work if every piece arrived, else None; forgets it."""
        held = self.held.get(token)
        if held is None or (held.step, held.group) != (step, group):
            return None
        del self.held[token]
        return held.grad if len(held.arrived) == len(self.pieces) else None

    def forget(self, token: int) -> None:
        self.held.pop(token, None)
