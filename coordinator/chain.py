"""A step's relay chain (protocol/SPEC.md 4.5) as a plain object: the parameters go to the
first worker and are forwarded down the chain; the gradients are added up along it in
ascending chunk order, and only the last worker's sum comes back. The coordinator's link then
carries one copy of each per step, whatever the number of workers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .assembler import GradientAssembler

CHAIN_GRACE_S = 1.0     # after the last push, how long the chain's sum may take before it is abandoned
NO_LINKS = {"params_to": "", "sum_from": False, "sum_to": ""}


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
    sums: GradientAssembler           # the last worker's sums, as they arrive
    active: bool = True
    total: np.ndarray | None = None     # the whole sum, once every piece is in
    all_pushed_at: float | None = None

    @classmethod
    def plan(cls, assignment: list[tuple[tuple[int, ...], int]], relays: dict[int, str],
             pieces: list[tuple[int, int]], dtype) -> "RelayChain | None":
        """A chain over (group, token) pairs if there are two or more and every holder relays."""
        if len(assignment) < 2 or not all(relays.get(token) for _, token in assignment):
            return None
        assignment = sorted(assignment)
        return cls([g for g, _ in assignment], [t for _, t in assignment],
                   [relays[t] for _, t in assignment], GradientAssembler(pieces, dtype))

    def links(self, group: tuple[int, ...], token: int) -> dict:
        """The `work` fields of that group's holder (SPEC.md 4.5); no links off the chain."""
        if not self.active or group not in self.groups or self.tokens[self.groups.index(group)] != token:
            return dict(NO_LINKS)
        k = self.groups.index(group)
        after = self.relays[k + 1] if k + 1 < len(self.groups) else ""
        return {"params_to": after, "sum_from": k > 0, "sum_to": after}

    def sends_params(self, group: tuple[int, ...], token: int) -> bool:
        """Whether the coordinator sends this work's parameters itself (else the chain does)."""
        return self.links(group, token) == NO_LINKS or group == self.groups[0]

    def keep(self, token: int, step: int, group: tuple[int, ...], piece: int, array: np.ndarray) -> bool:
        """A piece of the chain's sum, from its last worker only."""
        if not self.active or self.total is not None or (group, token) != (self.groups[-1], self.tokens[-1]):
            return False
        self.sums.keep(token, step, group, piece, array)
        self.total = self.sums.take(token, step, group) if self.sums.complete(token) else None
        return True

    def overdue(self, now: float) -> bool:
        return (self.active and self.total is None and self.all_pushed_at is not None
                and now - self.all_pushed_at > CHAIN_GRACE_S)

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
