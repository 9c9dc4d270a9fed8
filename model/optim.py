"""Gradient clipping and RMSprop on flat parameter vectors, as one optimizer object.

Every worker waits while the optimizer runs, so it is on the critical path of each step: the
mean over predictions and the clipping factor are folded into RMSprop's coefficients (no pass
scales the gradient), and the element-wise passes are split over threads (numpy releases the
GIL). The object owns its workspace and its threads; the run closes it."""
from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
import math
import os

import numpy as np

# The vector is cut into a fixed number of spans, whatever the number of threads, so the norm's
# partial sums (and hence every result) do not depend on the machine's core count.
SPANS = 4
THREADED_MIN_SIZE = 1 << 20      # below this, starting threads costs more than it saves


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


def rmsprop(param: np.ndarray, square_avg: np.ndarray, grad: np.ndarray, lr: float, rho: float,
            eps: float, *, grad_scale: float = 1.0, weight_decay: float = 0.0, out: np.ndarray | None = None,
            scratch: tuple[np.ndarray, np.ndarray] | None = None,
            executor: Executor | None = None) -> np.ndarray:
    """With g = grad_scale * grad: v = rho*v + (1-rho)*g*g (in place on square_avg); writes
    p - lr*g/(sqrt(v)+eps) into out (which may be param itself; a new array when None), with
    weight_decay (decoupled, as AdamW's) p*(1 - lr*weight_decay) - lr*g/(sqrt(v)+eps)."""
    out = np.empty_like(param) if out is None else out
    denominator, step = scratch if scratch is not None else (np.empty_like(param), np.empty_like(param))
    dtype = param.dtype.type
    rms_coefficient, step_coefficient = dtype((1 - rho) * grad_scale * grad_scale), dtype(lr * grad_scale)
    kept = dtype(1 - lr * weight_decay)

    def update(span: slice) -> None:
        g, v, d, s = grad[span], square_avg[span], denominator[span], step[span]
        v *= dtype(rho)
        np.multiply(g, rms_coefficient, out=d)
        d *= g
        v += d
        np.sqrt(v, out=d)
        d += dtype(eps)
        np.multiply(g, step_coefficient, out=s)
        s /= d
        if weight_decay:
            np.multiply(param[span], kept, out=d)
            np.subtract(d, s, out=out[span])
        else:
            np.subtract(param[span], s, out=out[span])

    _run(executor, update, _spans(param.size))
    return out


class RMSprop:
    """Clipping by the mean gradient's global norm, then RMSprop. square_avg (v) is updated in
    place: it is the array the training state (and so the checkpoint) holds."""

    def __init__(self, square_avg: np.ndarray, rho: float, eps: float, clip: float,
                 threads: int | None = None, weight_decay: float = 0.0):
        self.square_avg, self.rho, self.eps, self.clip = square_avg, rho, eps, clip
        self.weight_decay = weight_decay
        self.grad_sum = np.empty_like(square_avg)
        self.scratch = (np.empty_like(square_avg), np.empty_like(square_avg))
        threads = min(SPANS, os.cpu_count() or 1) if threads is None else threads
        self.executor = (ThreadPoolExecutor(threads, thread_name_prefix="optimizer")
                         if threads > 1 and square_avg.size >= THREADED_MIN_SIZE else None)

    def step(self, params: np.ndarray, grads: list[np.ndarray], count: int, lr: float,
             out: np.ndarray) -> float:
        """One step from gradients of a summed loss over `count` predictions (summed in the
        order given, left unchanged). The new parameters go into out (params itself is fine).
        Returns the mean gradient's global norm before clipping."""
        grad, norm = summed_gradient(grads, self.grad_sum, self.executor)
        norm /= count
        rmsprop(params, self.square_avg, grad, lr, self.rho, self.eps,
                grad_scale=clip_scale(norm, self.clip) / count, weight_decay=self.weight_decay, out=out,
                scratch=self.scratch,
                executor=self.executor)
        return norm

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
