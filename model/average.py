"""An exponential moving average of the parameters (Config.ema_decay), updated after every
optimizer step from the new parameters alone, so it is a pure function of the run's steps (the
same for any worker count, exact on resume) and never feeds back into training.

It starts from zero and is read debiased, average / (1 - decay**n) after n updates: a weighted
mean of the parameters it has seen, without the initial parameters' weight that an average
started from them would carry for thousands of steps (0.999**401 = 0.67 after an epoch)."""
from __future__ import annotations

import numpy as np


class ParamAverage:
    """average <- average + (1 - decay) * (params - average), in the run's dtype, in place."""

    def __init__(self, decay: float):
        self.decay = decay
        self.scratch: np.ndarray | None = None      # (P,) reused every step: no 13 MB allocation

    def update(self, average: np.ndarray, params: np.ndarray) -> None:
        if self.scratch is None or self.scratch.shape != params.shape or self.scratch.dtype != params.dtype:
            self.scratch = np.empty_like(params)
        np.subtract(params, average, out=self.scratch)
        self.scratch *= params.dtype.type(1.0 - self.decay)
        average += self.scratch


def debiased(average: np.ndarray, decay: float, updates: int) -> np.ndarray:
    """The average as a mean of the parameters it has seen (a new array); zeros before any."""
    if updates <= 0:
        return np.zeros_like(average)
    return average / average.dtype.type(1.0 - decay ** updates)
