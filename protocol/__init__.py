"""CLSTM/6: the wire protocol between coordinator, workers and clients (see SPEC.md).

Knows message framing, names, dtypes and shapes; nothing about what the arrays mean."""
from .messages import (DEFAULT_MAX_MESSAGE_BYTES, HEARTBEAT_S, LIVENESS_S, SIGNATURE, Message,  # noqa: F401
                       ProtocolError, decode, encode)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "HEARTBEAT_S", "LIVENESS_S", "SIGNATURE", "Message",
           "ProtocolError", "decode", "encode"]
