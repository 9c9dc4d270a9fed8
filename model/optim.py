"""Gradient clipping and RMSprop on flat parameter vectors.

The coordinator runs this while every worker waits for the new parameters, so it is on the
critical path of each step: the mean over predictions and the clipping factor are folded into
RMSprop's coefficients (no separate pass scales the gradient), and the element-wise passes can
be split over threads (numpy releases the GIL)."""
from __future__ import annotations

from concurrent.futures import Executor
import math

import numpy as np

# The vector is cut into a fixed number of spans, whatever the number of threads, so the norm's
# partial sums (and hence every result) do not depend on the machine's core count.
SPANS = 4


def _spans(size: int) -> list[slice]:
    bounds = np.linspace(0, size, SPANS + 1).astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _run(executor: Executor | None, work, spans: list[slice]) -> list:
    if executor is None:
        return [work(span) for span in spans]
    return [future.result() for future in [executor.submit(work, span) for span in spans]]


def summed_gradient(grads: list[np.ndarray], out: np.ndarray,
                    executor: Executor | None = None) -> tuple[np.ndarray, float]:
    """The sum of grads, added in the order given (into out, unless there is only one), and
    its L2 norm; each span is summed and squared while it is still in cache."""
    grad = grads[0] if len(grads) == 1 else out

    def work(span: slice) -> float:
        if len(grads) > 1:
            np.add(grads[0][span], grads[1][span], out=out[span])
            for other in grads[2:]:
                out[span] += other[span]
        part = grad[span]
        return float(np.dot(part, part))    # one BLAS dot in the gradient's own dtype
    return grad, math.sqrt(sum(_run(executor, work, _spans(grad.size))))


def clip_scale(norm: float, clip: float) -> float:
    """The factor that brings a gradient of this norm down to at most clip (0 disables)."""
    return clip / norm if clip > 0 and norm > clip else 1.0


def rmsprop(param: np.ndarray, param_rms: np.ndarray, grad: np.ndarray, lr: float, rho: float,
            eps: float, scratch: np.ndarray | None = None, grad_scale: float = 1.0,
            executor: Executor | None = None) -> np.ndarray:
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

    _run(executor, update, _spans(param.size))
    return new_param
