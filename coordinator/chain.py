"""A step's relay chain (protocol/SPEC.md 4.5) as a plain object: the parameters go to the
first worker and are forwarded down the chain; the gradients are added up along it in
ascending chunk order, and only the last worker's sum comes back. The coordinator's link then
carries one copy of each per step, whatever the number of workers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.wire import sum_tag
from protocol.checks import wire_name
from protocol.relay_auth import digest, new_key
from .assembler import GradientAssembler

CHAIN_GRACE_S = 1.0     # after the last push, how long the chain's sum may take before it is abandoned
NO_LINKS = {"params_to": "", "sum_from": False, "sum_to": "", "params_digests": [], "sum_key_in": "",
            "sum_key_out": ""}


# What an abandoned chain asks the socket loop to send.
@dataclass(frozen=True)
class SendDirect:
    token: int
    group: tuple[int, ...]


@dataclass(frozen=True)
class SendParams:
    token: int


@dataclass
class RelayChain:
    groups: list[tuple[int, ...]]       # ascending: the order of the sum
    tokens: list[int]                   # who holds each group
    relays: list[str]                   # their relay endpoints
    sums: GradientAssembler             # the last worker's sums, as they arrive
    digests: list[str] = None           # SHA-256 of each parameter piece on the wire (SPEC.md 4.5)
    keys: list[str] = None              # keys[k]: the key of the link from worker k to worker k+1
    active: bool = True
    total: np.ndarray | None = None     # the whole sum, once every piece is in
    all_pushed_at: float | None = None

    @classmethod
    def plan(cls, assignment: list[tuple[tuple[int, ...], int]], relays: dict[int, str],
             pieces: list[tuple[int, int]], dtype, wire_pieces) -> "RelayChain | None":
        """A chain over (group, token) pairs if there are two or more and every holder relays;
        wire_pieces() gives the step's parameters as they travel, to be digested."""
        if len(assignment) < 2 or not all(relays.get(token) for _, token in assignment):
            return None
        assignment = sorted(assignment)
        return cls([g for g, _ in assignment], [t for _, t in assignment],
                   [relays[t] for _, t in assignment], GradientAssembler(pieces, dtype),
                   [digest(piece) for piece in wire_pieces()], [new_key() for _ in assignment[1:]])

    def links(self, group: tuple[int, ...], token: int) -> dict:
        """The `work` fields of that group's holder (SPEC.md 4.5); no links off the chain."""
        if not self.active or group not in self.groups or self.tokens[self.groups.index(group)] != token:
            return dict(NO_LINKS)
        k = self.groups.index(group)
        last = k + 1 == len(self.groups)
        after = "" if last else self.relays[k + 1]
        return {"params_to": after, "sum_from": k > 0, "sum_to": after,
                "params_digests": self.digests if k > 0 else [], "sum_key_in": self.keys[k - 1] if k > 0 else "",
                "sum_key_out": "" if last else self.keys[k]}

    def sends_params(self, group: tuple[int, ...], token: int) -> bool:
        """Whether the coordinator sends this work's parameters itself (else the chain does)."""
        return self.links(group, token) == NO_LINKS or group == self.groups[0]

    @staticmethod
    def piece_problem(chain: "RelayChain | None", token: int, group: tuple[int, ...], prefix: bool) -> str | None:
        """Why a `grad` piece of the step breaks a chain's rules (SPEC.md 4.5), or None: a sum
        comes only from the chain's last worker, and a chained group's own pieces only after
        `direct` (a mislabelled sum would count as one group's gradient)."""
        if prefix and (chain is None or (token, group) != (chain.tokens[-1], chain.groups[-1])):
            return "a sum (prefix true) from a worker that is not the last of this step's relay chain"
        if not prefix and chain is not None and group in chain.groups and chain.active and chain.total is None:
            return f"its own gradient piece for chunks {list(group)}, which the relay chain sums, before `direct`"
        return None

    @staticmethod
    def sum_dtype_problem(array: np.ndarray, config) -> str | None:
        """Why a piece of a chain's sum is in the wrong dtype (SPEC.md 4.5), or None: summed or
        rounded otherwise, it would not be the coordinator's own sum."""
        expected = sum_tag(config)
        allowed = (expected, np.dtype(config.dtype).str) if expected == "<f2" else (expected,)
        if wire_name(array.dtype) not in allowed:
            return f"a sum in {wire_name(array.dtype)}, where this run's relay chains sum in {expected}"
        return None

    def keep(self, token: int, step: int, group: tuple[int, ...], piece: int, array: np.ndarray) -> bool:
        """A piece of the chain's sum, from its last worker only."""
        if not self.active or self.total is not None or (group, token) != (self.groups[-1], self.tokens[-1]):
            return False
        self.sums.keep(token, step, group, piece, array)
        self.total = self.sums.take(token, step, group) if self.sums.complete(token, step, group) else None
        return True

    def overdue(self, now: float, time_scale: float = 1.0) -> bool:
        return (self.active and self.total is None and self.all_pushed_at is not None
                and now - self.all_pushed_at > CHAIN_GRACE_S * time_scale)

    def involves(self, token: int) -> bool:
        return token in self.tokens

    def abandon(self, holder: dict, pushed, live) -> list[SendDirect | SendParams]:
        """The chain stops: every chained group's live holder (group -> token) sends its own
        gradient, and one that has not pushed yet (not in `pushed`) gets the parameters too."""
        self.active = False
        orders = []
        for group in self.groups:
            if holder[group] in live:
                orders.append(SendDirect(holder[group], group))
                if group not in pushed:
                    orders.append(SendParams(holder[group]))
        return orders
