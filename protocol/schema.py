"""What a CLSTM/7 message may hold (SPEC.md, sections 3-4): the limits, the field kinds, each
command's fields and arrays, and the Message and ProtocolError types. Declared here once; checks.py
checks received values against it and messages.py encodes and decodes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIGNATURE = b"CLSTM/7"
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
    DIGESTS, ARITHMETIC, MASK_FORM = (
        "int", "float", "fraction", "str", "name", "bool", "map", "chunks", "ints", "sizes", "strs", "shapes",
        "reference", "wire", "relay", "hex", "hexes", "digests", "arithmetic", "mask_form")
HEX_CHARS = 64          # a SHA-256 digest, an HMAC-SHA256 or a 32-byte key, in lowercase hex (SPEC.md 4.5)
MAX_PIECES = 4096
MAX_RELAY_CHARS = 256
MAX_ARITHMETIC_CHARS = 256
MASK_FORMS = ("step", "window")    # how a dropout mask varies in time (SPEC.md 4.2)

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
              "dropout_form": MASK_FORM,
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
