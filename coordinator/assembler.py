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


WORKS_PER_TOKEN = 2     # a backup copy's gradient may stream while a `direct` resends an earlier work's


class GradientAssembler:
    """For each token, the pieces of at most WORKS_PER_TOKEN works' gradients (SPEC.md 4.4): a
    piece of another work replaces the oldest held, so memory stays bounded by two gradients
    per registered worker whatever the workers send."""

    def __init__(self, pieces: list[tuple[int, int]], dtype):
        self.pieces = pieces            # (start, stop) of each piece in the flat vector
        self.dtype = np.dtype(dtype)
        self.held: dict[int, list[HeldGradient]] = {}       # token -> oldest first

    def _find(self, token: int, step: int, group: tuple[int, ...]) -> HeldGradient | None:
        return next((h for h in self.held.get(token, []) if (h.step, h.group) == (step, group)), None)

    def keep(self, token: int, step: int, group: tuple[int, ...], piece: int, array: np.ndarray) -> None:
        """Widens a piece into place (a piece sent twice replaces the copy before it)."""
        held = self._find(token, step, group)
        if held is None:
            works = self.held.setdefault(token, [])
            if len(works) >= WORKS_PER_TOKEN:
                works.pop(0)
            held = HeldGradient(step, group, np.empty(self.pieces[-1][1], self.dtype))
            works.append(held)
        start, stop = self.pieces[piece]
        held.grad[start:stop] = widen(array, self.dtype)
        held.arrived.add(piece)

    def complete(self, token: int, step: int, group: tuple[int, ...]) -> bool:
        held = self._find(token, step, group)
        return held is not None and len(held.arrived) == len(self.pieces)

    def take(self, token: int, step: int, group: tuple[int, ...]) -> np.ndarray | None:
        """The whole gradient of that work if every piece arrived, else None; forgets it."""
        held = self._find(token, step, group)
        if held is None:
            return None
        self.held[token].remove(held)
        if not self.held[token]:
            del self.held[token]
        return held.grad if len(held.arrived) == len(self.pieces) else None

    def forget(self, token: int) -> None:
        self.held.pop(token, None)
