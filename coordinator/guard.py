"""The cheap check between audits (protocol/SPEC.md 5.7): a step whose loss or gradient norm
leaves its recent range is audited at once, so a gross attack is caught within a step or two."""
from __future__ import annotations

from collections import deque
import statistics

GUARD_HISTORY = 32          # recent steps a step is compared with
GUARD_WARMUP = 8            # steps seen before the guard judges at all
NORM_FACTOR = 30.0          # a gradient norm this many times the recent median is out of range (natural spikes: 13x)
LOSS_JUMP = 1.0             # so is a mean loss this many nats/char above the recent median


class StepGuard:
    def __init__(self):
        self.losses: deque = deque(maxlen=GUARD_HISTORY)
        self.norms: deque = deque(maxlen=GUARD_HISTORY)

    def out_of_range(self, loss: float, norm: float) -> str | None:
        """Why this step's figures are out of its recent range, in words, or None."""
        if len(self.norms) < GUARD_WARMUP:
            return None
        usual_norm, usual_loss = statistics.median(self.norms), statistics.median(self.losses)
        if norm > NORM_FACTOR * usual_norm:
            return f"gradient norm {norm:.4g} is over {NORM_FACTOR:g} x the recent median {usual_norm:.4g}"
        if loss > usual_loss + LOSS_JUMP:
            return f"loss {loss:.4f} is over {LOSS_JUMP:g} above the recent median {usual_loss:.4f}"
        return None

    def record(self, loss: float, norm: float) -> None:
        self.losses.append(loss)
        self.norms.append(norm)

    def forget(self) -> None:
        """After a rollback the figures to come are of other steps."""
        self.losses.clear()
        self.norms.clear()
