"""What the parameter server keeps about the step in flight, and what it answers: plain records."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import numpy as np

from model.training import Contribution
from protocol import Message
from .chain import RelayChain


@dataclass
class StepInFlight:
    step: int
    owner: dict[tuple[int, ...], int]                      # chunk group -> token computing it
    received: dict[tuple[int, ...], Contribution] = field(default_factory=dict)
    accepted_from: dict[tuple[int, ...], int] = field(default_factory=dict)
    backup: dict[tuple[int, ...], int] = field(default_factory=dict)   # group -> token with a copy
    bypassed: set[tuple[int, ...]] = field(default_factory=set)        # copied instead of sent to its owner
    chain: RelayChain | None = None

    @property
    def summed(self) -> bool:
        """Whether the chain's sum is in: it stands for every chained group's gradient."""
        return self.chain is not None and self.chain.total is not None

    @property
    def complete(self) -> bool:
        """Every group's push is in, and every gradient: its own, or in the chain's sum."""
        return len(self.received) == len(self.owner) and all(
            c.grad is not None or (self.summed and g in self.chain.groups) for g, c in self.received.items())

    def chained(self, group: tuple[int, ...]) -> bool:
        """Whether the group was in the step's chain: its push may come without a gradient."""
        return self.chain is not None and group in self.chain.groups

    def copies(self, group: tuple[int, ...]) -> tuple[int, ...]:
        return (self.owner[group],) + ((self.backup[group],) if group in self.backup else ())

    def outstanding(self) -> list[tuple[int, ...]]:
        return [g for g in self.owner if g not in self.received]

    def accept(self, group: tuple[int, ...], token: int, contribution: Contribution, now: float | None) -> None:
        self.received[group] = contribution
        self.accepted_from[group] = token
        if self.chain is not None and len(self.received) == len(self.owner) and now is not None:
            self.chain.all_pushed_at = now

    def reassign(self, groups, live) -> list["WorkItem"]:
        """Whole groups move, so the same batches are computed and the sum stays bit-identical;
        each to the live token with the fewest chunks still to compute."""
        work = []
        for group in groups:
            if not live:
                break          # no live worker: the groups wait in owner for the next one
            pending = {t: 0 for t in live}
            for other, token in self.owner.items():
                if token in pending and other not in self.received:
                    pending[token] += len(other)
            self.owner[group] = token = min(pending, key=lambda t: (pending[t], t))
            work.append(WorkItem(token, self.step, group))
        return work

    def gradients(self) -> list[np.ndarray]:
        """The step's gradients in summing order (ascending chunks): the chain's sum standing for
        the chain's groups (a prefix), then every later group's own."""
        groups = sorted(self.owner)
        if self.summed:
            return [self.chain.total] + [self.received[g].grad for g in groups[len(self.chain.groups):]]
        return [self.received[g].grad for g in groups]


@dataclass
class Collected:
    """A finished step: every group's contribution (loss, states), and the gradients in
    summing order (ascending chunks; a relay chain's sum stands for the chain's groups)."""
    contributions: dict[tuple[int, ...], Contribution]
    gradients: list[np.ndarray]
    relayed: bool


@dataclass
class WorkItem:
    token: int
    step: int
    group: tuple[int, ...]          # the chunk ids, ascending


@dataclass(frozen=True)
class WorkOut:
    """A `work` to send, and whether its parameters go with it from the coordinator (else a
    relay chain brings them, SPEC.md 4.5)."""
    token: int
    message: Message
    sends_params: bool


class Outcome(str, Enum):
    ACCEPTED = "accepted"       # answered `ack`
    DUPLICATE = "duplicate"     # answered `ack`, nothing changes
    REFUSED = "refused"         # the worker sent something wrong: counts toward dropping it
    STALE = "stale"             # an old step or token: refused, does not count


@dataclass(frozen=True)
class PieceResult:
    """Whether a `grad` piece was kept; refusal: a protocol violation to log (and, with answer,
    to answer with `reject`), where a piece that is merely late is dropped in silence."""
    kept: bool
    refusal: str | None = None
    answer: bool = False

    def __bool__(self) -> bool:
        return self.kept


class PushResult(NamedTuple):
    status: Outcome
    reason: str | None = None


def partition(chunks: int, parts: int) -> list[tuple[int, ...]]:
    """Contiguous groups whose sizes differ by at most one; depends only on the counts."""
    parts = min(parts, chunks)
    base, extra = divmod(chunks, parts)
    groups, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        groups.append(tuple(range(start, start + size)))
        start += size
    return groups


class SentWork:
    """Recent work by (token, step, group): when it was sent (None once its push came), and
    what the last finished step accepted, so that a late repeat of either is a duplicate."""

    RECENT_STEPS = 4        # finished steps whose late pushes are still answered `duplicate`

    def __init__(self):
        self.sent_at: dict[tuple[int, int, tuple[int, ...]], float | None] = {}
        self.recently_accepted: set[tuple[int, int, tuple[int, ...]]] = set()

    def sent(self, key: tuple, now: float) -> None:
        self.sent_at[key] = now

    def when(self, key: tuple) -> float | None:
        return self.sent_at.get(key)

    def answered(self, key: tuple, now: float | None) -> float | None:
        """Its push came at `now`: the seconds since the work went out, once (else None)."""
        sent = self.sent_at.get(key)
        if sent is None or now is None:
            return None
        self.sent_at[key] = None
        return now - sent

    def known(self, key: tuple) -> bool:
        return key in self.sent_at or key in self.recently_accepted

    def finished(self, flight: StepInFlight) -> None:
        self.recently_accepted = {(token, flight.step, group) for group, token in flight.accepted_from.items()}
        self.sent_at = {k: sent for k, sent in self.sent_at.items() if k[1] > flight.step - self.RECENT_STEPS}
