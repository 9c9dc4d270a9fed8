"""A work's place in a step's relay chain (protocol/SPEC.md 4.5) as a plain object: its own
gradient pieces, the sums of the workers before it, and what goes where. No sockets: the
socket loop feeds pieces in and sends what comes out, to a relay endpoint or "" (the
coordinator)."""
from __future__ import annotations

import numpy as np

from model.wire import narrow, widen, wire_dtype_of
from protocol import Message
from protocol.relay_auth import digest, same, sum_mac

COORDINATOR = ""


class ChainSums:
    def __init__(self, work: Message, dtype, grad_out: np.ndarray):
        self.names = {"token": work["token"], "step": work["step"], "chunks": work["chunks"]}
        self.sum_from, self.sum_to = work["sum_from"], work["sum_to"]
        self.key_in, self.key_out = work["sum_key_in"], work["sum_key_out"]     # the links' keys (SPEC.md 4.5)
        self.in_chain = self.sum_from or bool(self.sum_to)
        self.dtype = np.dtype(dtype)
        self.sum_wire = wire_dtype_of(work["sum_wire"])  # what a sum this worker adds travels in
        self.grad_out = grad_out            # own pieces of the exact wire are views of it: kept with them
        self.trackers: list = []            # sends of views of grad_out
        self.own: dict[int, np.ndarray] = {}        # piece -> own gradient piece, as it travels
        self.before: dict[int, np.ndarray] = {}     # piece -> the sum of the workers before this one
        self.sent: dict[int, np.ndarray] = {}       # piece -> the sum this worker sent on, for `sums`
        self.summed: set[int] = set()
        self.direct = not self.in_chain

    def _grad(self, piece: int, array: np.ndarray, prefix: bool, to_relay: bool = False) -> Message:
        mac = sum_mac(self.key_out, self.names["step"], self.names["chunks"], piece, array) if to_relay else ""
        return Message("grad", {**self.names, "piece": piece, "prefix": prefix, "mac": mac}, {"grad": array})

    def own_piece(self, piece: int, array: np.ndarray) -> list[tuple[str, Message]]:
        """This worker's own gradient piece is final: where it (or a sum with it) goes now."""
        self.own[piece] = array
        if self.direct:
            return [(COORDINATOR, self._grad(piece, array, False))]
        return self._sum(piece)

    def follows(self, chunks: list[int]) -> bool:
        """Whether a sum naming these chunks comes from the worker right before this one."""
        return self.sum_from and not self.direct and chunks[-1] + 1 == self.names["chunks"][0]

    def authentic(self, message: Message) -> bool:
        """Whether a relayed sum carries the MAC of the link into this work (SPEC.md 4.5)."""
        expected = sum_mac(self.key_in, message["step"], message["chunks"], message["piece"], message.arrays["grad"])
        return bool(self.key_in) and same(expected, message["mac"])

    def sum_before(self, piece: int, array: np.ndarray) -> list[tuple[str, Message]]:
        if self.direct or piece in self.before:
            return []
        self.before[piece] = array
        return self._sum(piece)

    def _sum(self, piece: int) -> list[tuple[str, Message]]:
        if piece in self.summed or piece not in self.own or (self.sum_from and piece not in self.before):
            return []
        self.summed.add(piece)
        total = self.own[piece]
        if self.sum_from:           # in the run's dtype, earlier groups first: the coordinator's own order,
            total = np.add(widen(self.before[piece], self.dtype), widen(self.own[piece], self.dtype))
            total = narrow(total, self.sum_wire)        # rounded as the coordinator rounds (SPEC.md 4.5)
        self.sent[piece] = total
        return [(self.sum_to, self._grad(piece, total, True, to_relay=self.sum_to != COORDINATOR))]

    def go_direct(self, pieces: int) -> list[tuple[str, Message]]:
        """The chain is abandoned or audited: every own piece so far to the coordinator (and later
        ones too), then, in a chain, what it received and sent on (`sums`, SPEC.md 4)."""
        if self.direct:
            return []
        self.direct = True
        own = [(COORDINATOR, self._grad(piece, array, False)) for piece, array in sorted(self.own.items())]
        return own + ([(COORDINATOR, self.sums(pieces))] if self.in_chain else [])

    def sums(self, pieces: int) -> Message:
        """The digests of the sums received and sent on, widened to the run's dtype ("" where none)."""
        def digests(arrays: dict) -> list[str]:
            return [digest(widen(arrays[p], self.dtype)) if p in arrays else "" for p in range(pieces)]
        return Message("sums", {**self.names, "sum_in": digests(self.before), "sum_out": digests(self.sent)})
