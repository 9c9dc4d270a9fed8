"""Pure encode(message) -> frames and decode(frames) -> message for CLSTM/7 (SPEC.md, sections 3-4)."""
from __future__ import annotations

import math

import msgpack
import numpy as np

from .checks import check_array, check_depth, check_fields, is_int, reference_of, short, wire_name
from .schema import (DEFAULT_MAX_MESSAGE_BYTES, FLOAT_DTYPES, INDEX_DTYPE, MAX_ARRAYS, MAX_HEADER_BYTES,
                     NARROW_DTYPES, SCHEMAS, SIGNATURE, STORAGE, Message, ProtocolError)


def encode(message: Message) -> list:
    """Frames ready for send_multipart: signature, header, then the arrays' own buffers
    (contiguous arrays are not copied). Raises ProtocolError for a message that breaks SPEC."""
    check_fields(message.cmd, message.fields)
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
        check_array(message.cmd, name, array, message.fields, None, check_values=False)
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
    check_depth(header)
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
        raise ProtocolError(f"wrong protocol signature {short(bytes(frames[0])[:16])}, "
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
        raise ProtocolError(f"message could not be checked ({type(error).__name__}: {short(str(error))})",
                            reference_of(header)) from None


def _decode_body(header: dict, frames: list, dims: dict | None) -> Message:
    cmd, specs = header.pop("cmd", None), header.pop("arrays", None)
    if not isinstance(cmd, str):
        raise ProtocolError("header has no command")
    check_fields(cmd, header)
    expected = SCHEMAS[cmd][1]
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS or len(specs) != len(frames) - 2:
        raise ProtocolError(f"{cmd}: the array list does not match the {len(frames) - 2} array frames")
    arrays = {}
    for position, (spec, frame) in enumerate(zip(specs, frames[2:])):
        if (not isinstance(spec, list) or len(spec) != 3 or not isinstance(spec[0], str)
                or spec[1] not in FLOAT_DTYPES + NARROW_DTYPES + (INDEX_DTYPE,) or not isinstance(spec[2], list)
                or len(spec[2]) > 4 or not all(is_int(d) and d < 2 ** 31 for d in spec[2])):
            raise ProtocolError(f"{cmd}: malformed array description {short(spec)}")
        name, dtype, shape = spec
        if name not in expected or name in arrays:
            raise ProtocolError(f"{cmd}: unexpected or repeated array {short(name)}")
        if position >= len(expected) or name != list(expected)[position]:
            raise ProtocolError(f"{cmd}: array {name!r} out of order; the order is {list(expected)}")
        storage = np.dtype(STORAGE.get(dtype, dtype))
        if math.prod(shape) * storage.itemsize != len(frame):
            raise ProtocolError(f"{cmd}: array {name!r} of shape {shape} and {dtype} needs "
                                f"{math.prod(shape) * storage.itemsize} bytes, frame has {len(frame)}")
        arrays[name] = np.frombuffer(frame, dtype=storage).reshape(shape)
        check_array(cmd, name, arrays[name], header, dims)
    if arrays.keys() != expected.keys():
        raise ProtocolError(f"{cmd}: arrays must be {sorted(expected)}, got {sorted(arrays)}")
    return Message(cmd, header, arrays)
