"""What makes a relayed byte trustworthy (SPEC.md 4.5): a relayed parameter piece must have the
SHA-256 digest the coordinator listed in the `work`, and a relayed sum must carry an HMAC-SHA256
under the step's link key that the coordinator sent to both ends of the link. Pure functions."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

import numpy as np

from .checks import wire_name

KEY_BYTES = 32
SUM_CONTEXT = b"CLSTM/4 sum"


def _bytes(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array)).cast("B")


def digest(array: np.ndarray) -> str:
    """The SHA-256 of a piece's bytes as they travel, as 64 lowercase hex digits."""
    return hashlib.sha256(_bytes(array)).hexdigest()


def new_key() -> str:
    """A fresh link key (32 random bytes) as 64 lowercase hex digits."""
    return secrets.token_hex(KEY_BYTES)


def sum_mac(key: str, step: int, chunks: list[int], piece: int, array: np.ndarray) -> str:
    """The `mac` of a relayed sum: HMAC-SHA256 under the link key of the context, step, first and
    last chunk, piece, wire dtype name and array bytes (SPEC.md 4.5)."""
    mac = hmac.new(bytes.fromhex(key), SUM_CONTEXT, hashlib.sha256)
    mac.update(struct.pack("<4Q", step, chunks[0], chunks[-1], piece))
    mac.update(wire_name(array.dtype).encode("ascii"))
    mac.update(_bytes(array))
    return mac.hexdigest()


def same(expected: str, given: str) -> bool:
    """Compares a digest or MAC in constant time."""
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii", "replace"))
