"""Pure encode(message) -> frames and decode(frames) -> message for CLSTM/6 (SPEC.md, sections 3-4)."""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field

import msgpack
import numpy as np

SIGNATURE = b"CLSTM/6"
MAX_HEADER_BYTES = 64 * 1024
# Containers nested in a header, the header map itself counted: `shapes` (map > list > list) is the
# deepest the protocol needs. Anything deeper is refused before any field is looked at, so nothing
# recursive (comparison, repr) ever meets a deep structure (SPEC.md, section 3).
MAX_HEADER_DEPTH = 4
MAX_ARRAYS = 16
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
HEARTBEAT_S = 1.0       # default heartbeat interval (SPEC.md, section 5)
LIVENESS_S = 10.0       # default silence after which a peer is taken for dead
MAX_REFUSED_PUSHES = 3  # refused pushes in a row after which a worker is stopped and dropped
MAX_NAME_CHARS = 128
FLOAT_DTYPES = ("<f4", "<f8")
# Narrow wire dtypes for the arrays of `params` and `grad` (SPEC.md, section 4.3): IEEE half, and bfloat16
# (the top 16 bits of a float32), which numpy holds as uint16.
NARROW_DTYPES = ("<f2", "bf16")
STORAGE = {"bf16": "<u2"}
INDEX_DTYPE = "<i4"


class ProtocolError(ValueError):
    """Anything malformed: the receiver drops the message, logs why, and keeps serving.

    reference: what of the message could be read (cmd, token, step, chunks; None where not),
    so that a refusal can name the message it refuses (SPEC.md, section 4, `reject`)."""

    def __init__(self, text: str, reference: dict | None = None):
        super().__init__(text)
        self.reference = reference or {"cmd": "", "token": None, "step": None, "chunks": []}


# Field kinds.
INT, FLOAT, FRACTION, STR, NAME, BOOL, MAP, CHUNKS, INTS, SIZES, STRS, SHAPES, REFERENCE, WIRE, RELAY, HEX, HEXES, \
    DIGESTS, ARITHMETIC = (
        "int", "float", "fraction", "str", "name", "bool", "map", "chunks", "ints", "sizes", "strs", "shapes",
        "reference", "wire", "relay", "hex", "hexes", "digests", "arithmetic")
HEX_CHARS = 64          # a SHA-256 digest, an HMAC-SHA256 or a 32-byte key, in lowercase hex (SPEC.md 4.5)
MAX_PIECES = 4096
MAX_RELAY_CHARS = 256
MAX_ARITHMETIC_CHARS = 256

# cmd -> (fields, arrays as name -> (dtype kind, symbolic shape))
STATE = ("L", "B", "H")
SCHEMAS: dict[str, tuple[dict[str, str], dict[str, tuple[str, tuple[str, ...]]]]] = {
    "register": ({"name": NAME, "relay": RELAY, "arithmetic": ARITHMETIC}, {}),
    "heartbeat": ({"token": INT}, {}),
    "grad": ({"token": INT, "step": INT, "chunks": CHUNKS, "piece": INT, "prefix": BOOL, "mac": HEX},
             {"grad": ("wire", ("piece",))}),
    "push": ({"token": INT, "step": INT, "chunks": CHUNKS, "loss": FLOAT, "compute_s": FLOAT},
             {"h": ("float", STATE), "c": ("float", STATE)}),
    "sums": ({"token": INT, "step": INT, "chunks": CHUNKS, "sum_in": DIGESTS, "sum_out": DIGESTS}, {}),
    "bye": ({"token": INT}, {}),
    "welcome": ({"token": INT, "config": MAP, "vocab": STR, "heartbeat_s": FLOAT,
                 "liveness_s": FLOAT, "names": STRS, "shapes": SHAPES, "pieces": SIZES}, {}),
    "work": ({"token": INT, "step": INT, "chunks": CHUNKS, "dropout": FRACTION, "seed": INT, "wire": WIRE, "weight_drop": FRACTION,
              "sum_wire": WIRE, "params_to": RELAY, "sum_from": BOOL, "sum_to": RELAY,
              "params_digests": HEXES, "sum_key_in": HEX, "sum_key_out": HEX},
             {"h": ("float", STATE), "c": ("float", STATE),
              "inputs": ("index", ("B", "T")), "targets": ("index", ("B", "T"))}),
    "params": ({"step": INT, "piece": INT}, {"params": ("wire", ("piece",))}),
    "direct": ({"step": INT, "chunks": CHUNKS}, {}),
    "ack": ({"step": INT, "chunks": INTS, "status": STR}, {}),
    "reject": ({"reason": STR, "reregister": BOOL, "refers_to": REFERENCE}, {}),
    "stop": ({"reason": STR}, {}),
    "pull": ({}, {}),
    "model": ({"step": INT, "config": MAP, "vocab": STR, "names": STRS, "shapes": SHAPES},
              {"params": ("float", ("P",))}),
}


@dataclass
class Message:
    cmd: str
    fields: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    peer: str = field(default="", compare=False)    # where it came from, as the transport saw it; not sent
    key: str = field(default="", compare=False)     # the CurveZMQ public key (Z85) it came under, or ""

    def __getitem__(self, key):
        return self.fields[key]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 63


def _is_float(value) -> bool:
    """A msgpack float, or an integer standing for the same number (SPEC.md, section 3)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def reference_of(header: dict) -> dict:
    """The refused message's cmd, token, step and chunks, each where it was valid (else "",
    None, None, []): the `refers_to` map of a `reject`."""
    cmd, chunks = header.get("cmd"), header.get("chunks")
    return {"cmd": cmd if isinstance(cmd, str) and len(cmd) <= 64 else "",
            "token": header.get("token") if _is_int(header.get("token")) else None,
            "step": header.get("step") if _is_int(header.get("step")) else None,
            "chunks": chunks if isinstance(chunks, list) and len(chunks) <= 4096
            and all(_is_int(c) for c in chunks) else []}


def _is_hex(value, empty_ok: bool = True) -> bool:
    return isinstance(value, str) and ((empty_ok and value == "") or (
        len(value) == HEX_CHARS and all(c in "0123456789abcdef" for c in value)))


def _check_field(cmd: str, name: str, kind: str, value) -> None:
    ok = {
        INT: lambda v: _is_int(v),
        REFERENCE: lambda v: isinstance(v, dict) and v == reference_of(v),
        WIRE: lambda v: v in FLOAT_DTYPES + NARROW_DTYPES,
        FLOAT: _is_float,
        FRACTION: lambda v: _is_float(v) and 0 <= v < 1,
        STR: lambda v: isinstance(v, str) and len(v) <= MAX_HEADER_BYTES,
        NAME: lambda v: isinstance(v, str) and len(v) <= MAX_NAME_CHARS,
        RELAY: lambda v: isinstance(v, str) and len(v) <= MAX_RELAY_CHARS and (v == "" or v.startswith("tcp://")),
        BOOL: lambda v: isinstance(v, bool),
        HEX: _is_hex,
        HEXES: lambda v: isinstance(v, list) and len(v) <= MAX_PIECES and all(_is_hex(x, False) for x in v),
        DIGESTS: lambda v: isinstance(v, list) and len(v) <= MAX_PIECES and all(_is_hex(x) for x in v),
        ARITHMETIC: lambda v: isinstance(v, str) and len(v) <= MAX_ARITHMETIC_CHARS,
        MAP: lambda v: isinstance(v, dict),
        INTS: lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
        SIZES: lambda v: isinstance(v, list) and len(v) >= 1 and all(_is_int(x) and x >= 1 for x in v),
        CHUNKS: lambda v: (isinstance(v, list) and len(v) >= 1 and all(_is_int(x) for x in v)
                           and all(a < b for a, b in zip(v, v[1:]))),
        STRS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        SHAPES: lambda v: isinstance(v, list) and all(
            isinstance(s, list) and all(_is_int(d) for d in s) for s in v),
    }[kind](value)
    if not ok:
        raise ProtocolError(f"{cmd}: field {name!r} is not a valid {kind} ({_short(value)})")


_SHORT = reprlib.Repr()      # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 2, 4, 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40


def _short(value) -> str:
    """A bounded description of a received value, whatever its size or depth."""
    text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_depth(header: dict) -> None:
    """Refuses containers nested deeper than MAX_HEADER_DEPTH, without recursion."""
    pending = [(header, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_HEADER_DEPTH:
            raise ProtocolError(f"header nests containers deeper than {MAX_HEADER_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value
        pending += [(child, depth + 1) for child in children if isinstance(child, (dict, list))]


def _check_fields(cmd: str, fields: dict) -> None:
    if cmd not in SCHEMAS:
        raise ProtocolError(f"unknown command {_short(cmd)}")
    expected = SCHEMAS[cmd][0]
    missing, extra = expected.keys() - fields.keys(), fields.keys() - expected.keys()
    if missing or extra:
        raise ProtocolError(f"{cmd}: missing fields {sorted(missing)} / unexpected fields "
                            f"{sorted(map(str, extra))[:5]}")
    for name, kind in expected.items():
        _check_field(cmd, name, kind, fields[name])


def _check_array(cmd: str, name: str, array: np.ndarray, fields: dict, dims: dict | None,
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


def encode(message: Message) -> list:
    """Frames ready for send_multipart: signature, header, then the arrays' own buffers
    (contiguous arrays are not copied). Raises ProtocolError for a message that breaks SPEC."""
    _check_fields(message.cmd, message.fields)
    expected = SCHEMAS[message.cmd][1]
    if message.arrays.keys() != expected.keys():
        raise ProtocolError(f"{message.cmd}: arrays must be {sorted(expected)}, "
                            f"got {sorted(message.arrays)}")
    specs, frames = [], []
    for name in expected:
        array = np.ascontiguousarray(message.arrays[name])
        if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not np.little_endian):
            array = array.astype(array.dtype.newbyteorder("<"))
        # values are the receiver's to check (SPEC section 3); scanning them twice costs a step time
        _check_array(message.cmd, name, array, message.fields, None, check_values=False)
        specs.append([name, wire_name(array.dtype), list(array.shape)])
        frames.append(memoryview(array).cast("B") if array.size else b"")
    header = msgpack.packb({"cmd": message.cmd, "arrays": specs, **message.fields}, use_bin_type=True)
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{message.cmd}: header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return [SIGNATURE, header, *frames]


def _unpack_header(raw) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(bytes(raw), raw=False, strict_map_key=True, use_list=True,
                                 max_str_len=MAX_HEADER_BYTES, max_bin_len=0, max_ext_len=0,
                                 max_array_len=100_000, max_map_len=64)
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"header is not valid msgpack ({type(error).__name__}: {error})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    _check_depth(header)
    return header


def decode(frames, dims: dict | None = None,
           max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Frames (bytes-like, without the ROUTER identity) -> Message, or ProtocolError.

    dims, when given, maps shape symbols (P, L, H, T), "pieces" (the sizes of the parameter
    vector's pieces, SPEC.md 4.4), "float" (the run's float dtype) and "wire" (the narrow
    dtype `params` and `grad` may travel in, if any) to what this receiver expects."""
    frames = list(frames)
    if len(frames) < 2:
        raise ProtocolError(f"a message needs at least 2 frames, got {len(frames)}")
    if bytes(frames[0]) != SIGNATURE:
        raise ProtocolError(f"wrong protocol signature {_short(bytes(frames[0])[:16])}, "
                            f"expected {SIGNATURE!r}")
    total = sum(len(f) for f in frames)
    if total > max_message_bytes:
        raise ProtocolError(f"message of {total} bytes exceeds the limit of {max_message_bytes}")
    header = _unpack_header(frames[1])
    try:
        return _decode_body(dict(header), frames, dims)
    except ProtocolError as error:
        raise ProtocolError(str(error), reference_of(header)) from None
    except Exception as error:      # a check this module lacks: still the sender's fault, never a crash
        raise ProtocolError(f"message could not be checked ({type(error).__name__}: {_short(str(error))})",
                            reference_of(header)) from None


def _decode_body(header: dict, frames: list, dims: dict | None) -> Message:
    cmd, specs = header.pop("cmd", None), header.pop("arrays", None)
    if not isinstance(cmd, str):
        raise ProtocolError("header has no command")
    _check_fields(cmd, header)
    expected = SCHEMAS[cmd][1]
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS or len(specs) != len(frames) - 2:
        raise ProtocolError(f"{cmd}: the array list does not match the {len(frames) - 2} array frames")
    arrays = {}
    for position, (spec, frame) in enumerate(zip(specs, frames[2:])):
        if (not isinstance(spec, list) or len(spec) != 3 or not isinstance(spec[0], str)
                or spec[1] not in FLOAT_DTYPES + NARROW_DTYPES + (INDEX_DTYPE,) or not isinstance(spec[2], list)
                or len(spec[2]) > 4 or not all(_is_int(d) and d < 2 ** 31 for d in spec[2])):
            raise ProtocolError(f"{cmd}: malformed array description {_short(spec)}")
        name, dtype, shape = spec
        if name not in expected or name in arrays:
            raise ProtocolError(f"{cmd}: unexpected or repeated array {_short(name)}")
        if position >= len(expected) or name != list(expected)[position]:
            raise ProtocolError(f"{cmd}: array {name!r} out of order; the order is {list(expected)}")
        storage = np.dtype(STORAGE.get(dtype, dtype))
        if math.prod(shape) * storage.itemsize != len(frame):
            raise ProtocolError(f"{cmd}: array {name!r} of shape {shape} and {dtype} needs "
                                f"{math.prod(shape) * storage.itemsize} bytes, frame has {len(frame)}")
        arrays[name] = np.frombuffer(frame, dtype=storage).reshape(shape)
        _check_array(cmd, name, arrays[name], header, dims)
    if arrays.keys() != expected.keys():
        raise ProtocolError(f"{cmd}: arrays must be {sorted(expected)}, got {sorted(arrays)}")
    return Message(cmd, header, arrays)
