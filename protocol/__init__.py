"""CLSTM/1: the wire protocol between coordinator, workers and clients (see SPEC.md).

Knows message framing, names, dtypes and shapes; nothing about what the arrays mean."""
from .messages import SIGNATURE, Message, ProtocolError, decode, encode  # noqa: F401
