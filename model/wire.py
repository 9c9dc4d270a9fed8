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


def narrow_sums(config) -> bool:
    """Whether a run's chain sums travel narrow, rounded at every partial sum (Config.chain_sums
    'wire' with a narrow wire dtype); the coordinator then rounds its own sums alike."""
    return config.chain_sums == "wire" and WIRE_TAGS[config.wire_dtype] is not None


def sum_tag(config) -> str:
    """The protocol's name of the dtype a relay chain's sums travel in (SPEC.md 4.5)."""
    return WIRE_TAGS[config.wire_dtype] if narrow_sums(config) else np.dtype(config.dtype).str


def round_to_wire_(array: np.ndarray, wire_dtype: str, pieces) -> None:
    """In place, what `wire_round(array, wire_dtype, pieces)` returns."""
    if wire_dtype == "exact":
        return
    if wire_dtype == "bfloat16" and array.dtype == np.float32 and array.flags.c_contiguous:
        bits = array.view(np.uint32)           # narrow()'s rounding, without the uint16 copy
        kept = bits >> 16
        kept &= 1
        kept += 0x7FFF
        bits += kept
        bits &= 0xFFFF0000
        return
    for start, stop in pieces:
        array[start:stop] = wire_round(array[start:stop], wire_dtype)


def wire_sum(grads: list[np.ndarray], wire_dtype: str, pieces) -> np.ndarray:
    """Gradients added in the order given as a relay chain with Config.chain_sums 'wire' adds
    them: each partial sum rounded, piece by piece, to what the wire carries, before the next
    is added. grads are as they arrived (already rounded); a new array."""
    total = grads[0].copy()
    for grad in grads[1:]:
        total += grad
        round_to_wire_(total, wire_dtype, pieces)
    return total
