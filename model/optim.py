"""Gradient clipping and RMSprop on flat parameter vectors."""
from __future__ import annotations

import numpy as np


def clip_by_global_norm(grad: np.ndarray, clip: float) -> float:
    """Scales grad in place so its L2 norm is at most clip (0 disables); returns the norm before.

    The squared norm is one BLAS dot in the gradient's own dtype: no float64 copy of a
    multi-megabyte vector on the coordinator's critical path."""
    norm = float(np.sqrt(np.dot(grad, grad)))
    if clip > 0 and norm > clip:
        grad *= grad.dtype.type(clip / norm)
    return norm


def rmsprop(param: np.ndarray, param_rms: np.ndarray, grad: np.ndarray,
            lr: float, rho: float, eps: float, scratch: np.ndarray | None = None) -> np.ndarray:
    """v = rho*v + (1-rho)*g*g (in place on param_rms); returns the new p = p - lr*g/(sqrt(v)+eps).

    The new parameters are a fresh array, never an in-place update, so a version already
    handed to a socket for a zero-copy send is never modified under it."""
    dtype = param.dtype.type
    scratch = np.empty_like(param) if scratch is None else scratch
    param_rms *= dtype(rho)
    np.multiply(grad, dtype(1 - rho), out=scratch)
    scratch *= grad
    param_rms += scratch
    np.sqrt(param_rms, out=scratch)
    scratch += dtype(eps)
    new_param = np.multiply(grad, dtype(lr))
    new_param /= scratch
    np.subtract(param, new_param, out=new_param)
    return new_param
