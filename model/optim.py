"""Gradient clipping and RMSprop on flat parameter vectors."""
from __future__ import annotations

import numpy as np


def clip_by_global_norm(grad: np.ndarray, clip: float) -> float:
    """Scales grad in place so its L2 norm is at most clip (0 disables); returns the norm before."""
    norm = float(np.sqrt(np.dot(grad.astype(np.float64), grad.astype(np.float64))))
    if clip > 0 and norm > clip:
        grad *= grad.dtype.type(clip / norm)
    return norm


def rmsprop(param: np.ndarray, param_rms: np.ndarray, grad: np.ndarray,
            lr: float, rho: float, eps: float) -> np.ndarray:
    """v = rho*v + (1-rho)*g*g (in place on param_rms); returns the new p = p - lr*g/(sqrt(v)+eps).

    The new parameters are a fresh array, never an in-place update, so a version already
    handed to a socket for a zero-copy send is never modified under it."""
    dtype = param.dtype.type
    param_rms *= dtype(rho)
    param_rms += dtype(1 - rho) * grad * grad
    denominator = np.sqrt(param_rms)
    denominator += dtype(eps)
    step = grad * dtype(lr)
    step /= denominator
    return param - step
