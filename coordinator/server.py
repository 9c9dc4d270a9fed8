"""ParameterServer: the coordinator's logic as a plain object, with no sockets.

It reads the training state (for the work it hands out), owns the roster of workers and the
bookkeeping of the step in flight, and hands the step's contributions to the training run.
The socket loop in service.py feeds it events and sends what it returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import itertools

import numpy as np

from model.corpus import Corpus
from model.training import Contribution, TrainState
from protocol import LIVENESS_S


@dataclass
class WorkerRecord:
    token: int
    identity: bytes
    name: str
    last_heard: float
    last_sent: float = 0.0


@dataclass
class StepInFlight:
    step: int
    owner: dict[tuple[int, ...], int]                      # chunk group -> token computing it
    received: dict[tuple[int, ...], Contribution] = field(default_factory=dict)
    accepted_from: dict[tuple[int, ...], int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.received) == len(self.owner)


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


class ParameterServer:
    def __init__(self, state: TrainState, corpus: Corpus, liveness_s: float = LIVENESS_S):
        self.state = state
        self.corpus = corpus
        self.liveness_s = liveness_s
        self.workers: dict[int, WorkerRecord] = {}
        self.in_flight: StepInFlight | None = None
        # (token, step, group) accepted in the last finished steps: a late repeat is a duplicate
        self.recently_accepted: set[tuple[int, int, tuple[int, ...]]] = set()
        self._tokens = itertools.count(int.from_bytes(np.random.default_rng().bytes(4), "little") << 20)

    # roster -------------------------------------------------------------------------------
    def register(self, identity: bytes, name: str, now: float) -> int:
        """A new incarnation: any earlier registration from the same socket is forgotten; its
        unfinished groups become orphaned_work(), which the caller dispatches after welcoming."""
        for old in [t for t, w in self.workers.items() if w.identity == identity]:
            del self.workers[old]
        token = next(self._tokens)
        self.workers[token] = WorkerRecord(token, identity, name, now)
        return token

    def heard_from(self, token: int, now: float) -> bool:
        worker = self.workers.get(token)
        if worker is None:
            return False
        worker.last_heard = now
        return True

    def drop(self, token: int) -> list[WorkItem]:
        """Forgets a worker (dead or leaving); its unfinished groups go to live workers."""
        self.workers.pop(token, None)
        if self.in_flight is None:
            return []
        orphaned = [g for g, t in self.in_flight.owner.items()
                    if t == token and g not in self.in_flight.received]
        return self._reassign(orphaned)

    def reap(self, now: float) -> tuple[list[int], list[WorkItem]]:
        """Declares workers silent past liveness_s dead. Returns (dead tokens, new work)."""
        dead = [t for t, w in self.workers.items() if now - w.last_heard > self.liveness_s]
        work = []
        for token in dead:
            work += self.drop(token)
        return dead, work

    def _least_loaded(self) -> int | None:
        if not self.workers:
            return None
        pending = {t: 0 for t in self.workers}
        if self.in_flight:
            for group, token in self.in_flight.owner.items():
                if token in pending and group not in self.in_flight.received:
                    pending[token] += len(group)
        return min(pending, key=lambda t: (pending[t], t))

    def _reassign(self, groups) -> list[WorkItem]:
        """Whole groups move, so the same batches are computed and the sum stays bit-identical."""
        work = []
        for group in groups:
            token = self._least_loaded()
            if token is None:
                break          # no live worker: the groups wait in owner for the next one
            self.in_flight.owner[group] = token
            work.append(WorkItem(token, self.in_flight.step, group))
        return work

    def orphaned_work(self) -> list[WorkItem]:
        """Groups of the step in flight whose owner is gone (e.g. every worker died)."""
        if self.in_flight is None:
            return []
        groups = [g for g, t in self.in_flight.owner.items()
                  if t not in self.workers and g not in self.in_flight.received]
        return self._reassign(groups)

    # steps --------------------------------------------------------------------------------
    def start_step(self) -> list[WorkItem]:
        """Partitions the chunks over the live workers (in token order) for the next step."""
        if self.in_flight is not None or not self.workers:
            return []
        tokens = sorted(self.workers)
        groups = partition(self.state.config.chunks, len(tokens))
        self.in_flight = StepInFlight(self.state.step, dict(zip(groups, tokens)))
        return [WorkItem(t, self.state.step, g) for g, t in zip(groups, tokens)]

    def work_arrays(self, item: WorkItem) -> dict[str, np.ndarray]:
        chunk_ids = list(item.group)
        inputs, targets = self.corpus.window(self.state.step_in_epoch, chunk_ids)
        return {"params": self.state.params, "h": self.state.chunk_h[:, chunk_ids],
                "c": self.state.chunk_c[:, chunk_ids], "inputs": inputs, "targets": targets}

    def accept_push(self, token: int, step: int, group: tuple[int, ...], contribution: Contribution):
        """Returns ("accepted" | "duplicate", None) or (None, reason) for a refused push."""
        if token not in self.workers:
            return None, "unknown or expired token"
        flight = self.in_flight
        if (token, step, group) in self.recently_accepted:
            return "duplicate", None
        if flight is None or step != flight.step:
            return None, f"step {step} is not the step in flight (next is {self.state.step})"
        if flight.owner.get(group) != token:
            if flight.accepted_from.get(group) == token:
                return "duplicate", None
            return None, f"chunks {list(group)} are not assigned to this worker for step {step}"
        if group in flight.received:
            return "duplicate", None
        flight.received[group] = contribution
        flight.accepted_from[group] = token
        return "accepted", None

    def collect(self) -> dict[tuple[int, ...], Contribution]:
        """Ends the step in flight once every group has arrived: its contributions by group.
        Summing them and the optimizer step are the training run's (model/run.py)."""
        flight = self.in_flight
        if flight is None or not flight.complete:
            raise RuntimeError("collect called before every chunk's contribution arrived")
        self.in_flight = None
        self.recently_accepted = {(token, flight.step, group) for group, token in flight.accepted_from.items()}
        return flight.received
