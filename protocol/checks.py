"""Checks of a message's fields and arrays against schema.py: each bounded in time and depth
whatever it is given, each failure a ProtocolError that names the field (SPEC.md, section 3)."""
from __future__ import annotations

import math
import reprlib

import numpy as np

from .schema import (ARITHMETIC, BOOL, CHUNKS, DIGESTS, FLOAT, FLOAT_DTYPES, FRACTION, HEX, HEXES,
                     HEX_CHARS, INDEX_DTYPE, INT, INTS, MAP, MAX_ARITHMETIC_CHARS, MAX_HEADER_BYTES,
                     MAX_HEADER_DEPTH, MAX_NAME_CHARS, MAX_PIECES, MAX_RELAY_CHARS, NAME,
                     NARROW_DTYPES, ProtocolError, REFERENCE, RELAY, SCHEMAS, SHAPES, SIZES, STORAGE,
                     STR, STRS, WIRE, MASK_FORM, MASK_FORMS)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 63


def is_float(value) -> bool:
    """A msgpack float, or an integer standing for the same number (SPEC.md, section 3)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def reference_of(header: dict) -> dict:
    """The refused message's cmd, token, step and chunks, each where it was valid (else "",
    None, None, []): the `refers_to` map of a `reject`."""
    cmd, chunks = header.get("cmd"), header.get("chunks")
    return {"cmd": cmd if isinstance(cmd, str) and len(cmd) <= 64 else "",
            "token": header.get("token") if is_int(header.get("token")) else None,
            "step": header.get("step") if is_int(header.get("step")) else None,
            "chunks": chunks if isinstance(chunks, list) and len(chunks) <= 4096
            and all(is_int(c) for c in chunks) else []}


def is_hex(value, empty_ok: bool = True) -> bool:
    return isinstance(value, str) and ((empty_ok and value == "") or (
        len(value) == HEX_CHARS and all(c in "0123456789abcdef" for c in value)))


def check_field(cmd: str, name: str, kind: str, value) -> None:
    ok = {
        INT: lambda v: is_int(v),
        REFERENCE: lambda v: isinstance(v, dict) and v == reference_of(v),
        WIRE: lambda v: v in FLOAT_DTYPES + NARROW_DTYPES,
        MASK_FORM: lambda v: v in MASK_FORMS,
        FLOAT: is_float,
        FRACTION: lambda v: is_float(v) and 0 <= v < 1,
        STR: lambda v: isinstance(v, str) and len(v) <= MAX_HEADER_BYTES,
        NAME: lambda v: isinstance(v, str) and len(v) <= MAX_NAME_CHARS,
        RELAY: lambda v: isinstance(v, str) and len(v) <= MAX_RELAY_CHARS and (v == "" or v.startswith("tcp://")),
        BOOL: lambda v: isinstance(v, bool),
        HEX: is_hex,
        HEXES: lambda v: isinstance(v, list) and len(v) <= MAX_PIECES and all(is_hex(x, False) for x in v),
        DIGESTS: lambda v: isinstance(v, list) and len(v) <= MAX_PIECES and all(is_hex(x) for x in v),
        ARITHMETIC: lambda v: isinstance(v, str) and len(v) <= MAX_ARITHMETIC_CHARS,
        MAP: lambda v: isinstance(v, dict),
        INTS: lambda v: isinstance(v, list) and all(is_int(x) for x in v),
        SIZES: lambda v: isinstance(v, list) and len(v) >= 1 and all(is_int(x) and x >= 1 for x in v),
        CHUNKS: lambda v: (isinstance(v, list) and len(v) >= 1 and all(is_int(x) for x in v)
                           and all(a < b for a, b in zip(v, v[1:]))),
        STRS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        SHAPES: lambda v: isinstance(v, list) and all(
            isinstance(s, list) and all(is_int(d) for d in s) for s in v),
    }[kind](value)
    if not ok:
        raise ProtocolError(f"{cmd}: field {name!r} is not a valid {kind} ({short(value)})")


_SHORT = reprlib.Repr()      # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 2, 4, 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40


def short(value) -> str:
    """A bounded description of a received value, whatever its size or depth."""
    text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_depth(header: dict) -> None:
    """Refuses containers nested deeper than MAX_HEADER_DEPTH, without recursion."""
    pending = [(header, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_HEADER_DEPTH:
            raise ProtocolError(f"header nests containers deeper than {MAX_HEADER_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value
        pending += [(child, depth + 1) for child in children if isinstance(child, (dict, list))]


def check_fields(cmd: str, fields: dict) -> None:
    if cmd not in SCHEMAS:
        raise ProtocolError(f"unknown command {short(cmd)}")
    expected = SCHEMAS[cmd][0]
    missing, extra = expected.keys() - fields.keys(), fields.keys() - expected.keys()
    if missing or extra:
        raise ProtocolError(f"{cmd}: missing fields {sorted(missing)} / unexpected fields "
                            f"{sorted(map(str, extra))[:5]}")
    for name, kind in expected.items():
        check_field(cmd, name, kind, fields[name])


def check_array(cmd: str, name: str, array: np.ndarray, fields: dict, dims: dict | None,
                 check_values: bool = True) -> None:
    kind, symbols = SCHEMAS[cmd][1][name]
    dtype = wire_name(array.dtype)
    if kind == "index" and dtype != INDEX_DTYPE:
        raise ProtocolError(f"{cmd}: array {name!r} must be {INDEX_DTYPE}, got {dtype}")
    if kind in ("float", "wire"):
        allowed = FLOAT_DTYPES + (NARROW_DTYPES if kind == "wire" else ())
        if dtype not in allowed:
            raise ProtocolError(f"{cmd}: array {name!r} must be one of {allowed}, got {dtype}")
        if dims and "float" in dims and dtype != dims["float"] and not (
                kind == "wire" and dtype == dims.get("wire")):
            run = dims["float"] + (f" or {dims['wire']}" if kind == "wire" and dims.get("wire") else "")
            raise ProtocolError(f"{cmd}: array {name!r} is {dtype}, this run uses {run}")
        if check_values and not finite(array):
            raise ProtocolError(f"{cmd}: array {name!r} holds NaN or infinite values")
    if array.ndim != len(symbols):
        raise ProtocolError(f"{cmd}: array {name!r} must have {len(symbols)} dimensions, "
                            f"got shape {array.shape}")
    known = dict(dims or {})
    if "chunks" in fields:
        known["B"] = len(fields["chunks"])
    if "piece" in fields and "pieces" in known:
        if fields["piece"] >= len(known["pieces"]):
            raise ProtocolError(f"{cmd}: piece {fields['piece']} does not exist; this run has "
                                f"{len(known['pieces'])} pieces")
        known["piece"] = known["pieces"][fields["piece"]]
    for axis, symbol in enumerate(symbols):
        if symbol in known and array.shape[axis] != known[symbol]:
            raise ProtocolError(f"{cmd}: array {name!r} has shape {array.shape}, axis {axis} "
                                f"must be {symbol} = {known[symbol]}")


def wire_name(dtype: np.dtype) -> str:
    """The protocol's name of a numpy dtype (uint16 holds bfloat16)."""
    return "bf16" if dtype.str == STORAGE["bf16"] else dtype.str


def finite(array: np.ndarray) -> bool:
    if wire_name(array.dtype) == "bf16":         # all-ones exponent: infinity or NaN
        return not np.any(np.bitwise_and(array, 0x7F80) == 0x7F80)
    return bool(np.isfinite(array).all())
