"""The roster: who is registered, since when it is silent, and the timings the policies read.
A plain object: the parameter server asks it questions and tells it what happened."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import itertools
import statistics

import numpy as np

WALLS_KEPT = 8              # per worker: seconds per chunk, work sent to push received


@dataclass
class WorkerRecord:
    token: int
    identity: bytes
    name: str
    last_heard: float
    last_sent: float = 0.0
    relay: str = ""             # where it accepts relayed messages (SPEC.md 4.5); "" for nowhere
    arithmetic: str = ""        # what fixes its results' bits, as it declared (SPEC.md 5.7)
    key: str = ""               # its CurveZMQ public key (Z85), or "" without keys
    refused_in_a_row: int = 0
    lost_in_a_row: int = 0      # own groups whose copy was accepted first
    walls_per_chunk: deque = field(default_factory=lambda: deque(maxlen=WALLS_KEPT))
    # seconds from work sent to push received beyond the computing, for work off any relay
    # chain: what its own link costs it
    overheads: deque = field(default_factory=lambda: deque(maxlen=WALLS_KEPT))

    def usual_per_chunk(self) -> float | None:
        return statistics.median(self.walls_per_chunk) if self.walls_per_chunk else None


class Roster:
    def __init__(self, liveness_s: float, time_scale: float = 1.0):
        self.liveness_s = liveness_s
        # > 1 where every wait is dilated (scripts/netbench.py --dilation): the policies' fixed
        # margins in seconds stretch with it
        self.time_scale = time_scale
        self.workers: dict[int, WorkerRecord] = {}
        self.bars: set[bytes | str] = set()     # sockets and names found wrong by an audit (SPEC.md 5.7)
        self._tokens = itertools.count(int.from_bytes(np.random.default_rng().bytes(4), "little") << 20)

    def register(self, identity: bytes, name: str, now: float, relay: str = "", arithmetic: str = "",
                 key: str = "") -> tuple[int, list[int]]:
        """A new incarnation: (its token, the tokens of earlier registrations from the same
        socket, which are forgotten)."""
        forgotten = [t for t, w in self.workers.items() if w.identity == identity]
        for old in forgotten:
            del self.workers[old]
        token = next(self._tokens)
        self.workers[token] = WorkerRecord(token, identity, name, now, relay=relay, arithmetic=arithmetic, key=key)
        return token, forgotten

    def bar(self, identity: bytes, name: str) -> None:
        """Refused for the rest of the run: its socket, and its name (a restarted process has a
        new socket). Without CurveZMQ keys a stranger can pick another name: keys are the barrier."""
        self.bars.update((identity, name))

    def barred(self, identity: bytes, name: str) -> bool:
        return identity in self.bars or name in self.bars

    def heard_from(self, token: int, now: float) -> bool:
        worker = self.workers.get(token)
        if worker is not None:
            worker.last_heard = now
        return worker is not None

    def silent(self, now: float) -> list[int]:
        """The tokens silent past liveness_s: dead."""
        return [t for t, w in self.workers.items() if now - w.last_heard > self.liveness_s]

    def remove(self, token: int) -> WorkerRecord | None:
        return self.workers.pop(token, None)

    def usual_wall_per_chunk(self) -> float | None:
        """The median over every worker's recent seconds per chunk."""
        walls = [w for worker in self.workers.values() for w in worker.walls_per_chunk]
        return statistics.median(walls) if walls else None

    def timed(self, token: int, wall_s: float, chunks: int, overhead_s: float | None) -> None:
        """A push came wall_s after its work was sent; overhead_s: its link's share, for work off
        any chain (None otherwise)."""
        worker = self.workers[token]
        worker.walls_per_chunk.append(wall_s / chunks)
        if overhead_s is not None:
            worker.overheads.append(overhead_s)
