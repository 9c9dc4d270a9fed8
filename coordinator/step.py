"""What the parameter server keeps about workers and the step in flight: plain records."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import statistics

from model.training import Contribution
from .chain import RelayChain

WALLS_KEPT = 8              # per worker: seconds per chunk, work sent to push received


@dataclass
class WorkerRecord:
    token: int
    identity: bytes
    name: str
    last_heard: float
    last_sent: float = 0.0
    relay: str = ""             # where it accepts relayed messages (SPEC.md 4.5); "" for nowhere
    refused_in_a_row: int = 0
    lost_in_a_row: int = 0      # own groups whose copy was accepted first
    walls_per_chunk: deque = field(default_factory=lambda: deque(maxlen=WALLS_KEPT))
    # seconds from work sent to push received beyond the computing, for work off any relay
    # chain: what its own link costs it
    overheads: deque = field(default_factory=lambda: deque(maxlen=WALLS_KEPT))

    def usual_per_chunk(self) -> float | None:
        return statistics.median(self.walls_per_chunk) if self.walls_per_chunk else None


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
    def complete(self) -> bool:
        """Every group's push is in, and every gradient: its own, or in the chain's sum."""
        summed = self.chain is not None and self.chain.total is not None
        return len(self.received) == len(self.owner) and all(
            c.grad is not None or (summed and g in self.chain.groups) for g, c in self.received.items())

    def chained(self, group: tuple[int, ...]) -> bool:
        """Whether the group was in the step's chain: its push may come without a gradient."""
        return self.chain is not None and group in self.chain.groups

    def copies(self, group: tuple[int, ...]) -> tuple[int, ...]:
        return (self.owner[group],) + ((self.backup[group],) if group in self.backup else ())

    def outstanding(self) -> list[tuple[int, ...]]:
        return [g for g in self.owner if g not in self.received]


@dataclass
class BackupCounts:
    issued: int = 0
    won: int = 0            # the copy's push arrived first

    @property
    def wasted(self) -> int:
        return self.issued - self.won


@dataclass
class WorkItem:
    token: int
    step: int
    group: tuple[int, ...]          # the chunk ids, ascending


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
