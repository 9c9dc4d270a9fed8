"""CLSTM/7: the wire protocol between coordinator, workers and clients (see SPEC.md).

Knows message framing, names, dtypes and shapes; nothing about what the arrays mean."""
from .messages import decode, encode  # noqa: F401
from .schema import (DEFAULT_MAX_MESSAGE_BYTES, HEARTBEAT_S, LIVENESS_S, SIGNATURE, Message,  # noqa: F401
                     ProtocolError)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "HEARTBEAT_S", "LIVENESS_S", "SIGNATURE", "Message",
           "ProtocolError", "decode", "encode"]
