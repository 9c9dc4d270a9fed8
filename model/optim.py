"""Gradient clipping and RMSprop on flat parameter vectors.

The coordinator runs this while every worker waits for the new parameters, so it is on the
critical path of each step: the mean over predictions and the clipping factor are folded into
RMSprop's coefficients (no separate pass scales the gradient), and the element-wise passes can
be split over threads (numpy releases the GIL; each element sees the same operations, so the
result does not depend on the split)."""
from __future__ import annotations

from concurrent.futures import Executor

import numpy as np


def global_norm(grad: np.ndarray) -> float:
    """L2 norm as one BLAS dot in the gradient's own dtype: no float64 copy of megabytes."""
    return float(np.sqrt(np.dot(grad, grad)))


def clip_scale(norm: float, clip: float) -> float:
    """The factor that brings a gradient of this norm down to at most clip (0 disables)."""
    return clip / norm if clip > 0 and norm > clip else 1.0


def rmsprop(param: np.ndarray, param_rms: np.ndarray, grad: np.ndarray, lr: float, rho: float,
            eps: float, scratch: np.ndarray | None = None, grad_scale: float = 1.0,
            executor: Executor | None = None, parts: int = 1) -> np.ndarray:
    """With g = grad_scale * grad: v = rho*v + (1-rho)*g*g (in place on param_rms); returns the
    new p = p - lr*g/(sqrt(v)+eps).

    The new parameters are a fresh array, never an in-place update, so a version already
    handed to a socket for a zero-copy send is never modified under it."""
    scratch = np.empty_like(param) if scratch is None else scratch
    new_param = np.empty_like(param)
    dtype = param.dtype.type
    rms_coefficient, step_coefficient = dtype((1 - rho) * grad_scale * grad_scale), dtype(lr * grad_scale)

    def update(span: slice) -> None:
        g, v, s, out = grad[span], param_rms[span], scratch[span], new_param[span]
        v *= dtype(rho)
        np.multiply(g, rms_coefficient, out=s)
        s *= g
        v += s
        np.sqrt(v, out=s)
        s += dtype(eps)
        np.multiply(g, step_coefficient, out=out)
        out /= s
        np.subtract(param[span], out, out=out)

    bounds = np.linspace(0, param.size, max(1, parts) + 1).astype(int)
    spans = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    if executor is None or len(spans) == 1:
        for span in spans:
            update(span)
    else:
        for future in [executor.submit(update, span) for span in spans]:
            future.result()
    return new_param
