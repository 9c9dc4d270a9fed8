"""The opt-in narrow wire (Config.wire_dtype): parameters out and gradients in travel as
bfloat16 or float16 and are widened on arrival. A pure function of the array, so every process
(and the in-process path, which rounds the same way) sees the same bits.

bfloat16 is the top 16 bits of a float32, rounded to nearest, ties to even; numpy holds it as
uint16. float16 is IEEE half; a gradient that would overflow it is sent unnarrowed instead."""
from __future__ import annotations

import numpy as np

# Config.wire_dtype -> the protocol's name for the narrow dtype (None: the run's own dtype)
WIRE_TAGS = {"exact": None, "bfloat16": "bf16", "float16": "<f2"}


def wire_dtype_of(tag: str) -> str:
    """A `work` message's `wire` field -> Config.wire_dtype (a float dtype's name means exact)."""
    return next((name for name, known in WIRE_TAGS.items() if known == tag), "exact")


def narrow(array: np.ndarray, wire_dtype: str) -> np.ndarray:
    """(P,) run dtype -> (P,) wire storage (uint16 for bfloat16, float16), or array itself."""
    if wire_dtype == "exact":
        return array
    if wire_dtype == "float16":
        with np.errstate(over="ignore"):
            half = array.astype(np.float16)
        return half if np.isfinite(half).all() else array
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits >> 16) & 1                  # ties to even: add 0x7FFF plus the kept lowest bit
    rounded += 0x7FFF
    rounded += bits
    return (rounded >> 16).astype(np.uint16)


def widen(array: np.ndarray, dtype) -> np.ndarray:
    """Wire storage -> the run's dtype (a new array; the run's own dtype passes through)."""
    dtype = np.dtype(dtype)
    if array.dtype == np.uint16:
        return (array.astype(np.uint32) << 16).view(np.float32).astype(dtype, copy=False)
    return array if array.dtype == dtype else array.astype(dtype)


def wire_round(array: np.ndarray, wire_dtype: str, pieces=None) -> np.ndarray:
    """What the array becomes after a trip over the wire; pieces: the (start, stop) ranges it
    travels in when each is narrowed on its own (a float16 piece that would overflow goes
    unnarrowed, the others not)."""
    if wire_dtype == "exact":
        return array
    if pieces is None:
        return widen(narrow(array, wire_dtype), array.dtype)
    return np.concatenate([wire_round(array[start:stop], wire_dtype) for start, stop in pieces])
