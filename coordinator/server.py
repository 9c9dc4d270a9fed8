"""ParameterServer: the coordinator's logic as a plain object, with no sockets.

It reads the training state (for the work it hands out), owns the roster of workers and the
bookkeeping of the step in flight, and hands the step's contributions to the training run.
The socket loop in service.py feeds it events and sends what it returns.
"""
from __future__ import annotations

import itertools
import statistics

import numpy as np

from model.corpus import Corpus
from model.training import Contribution, TrainState
from model.wire import WIRE_TAGS, narrow
from protocol import LIVENESS_S
from .chain import NO_LINKS, RelayChain
from .pieces import GradientPieces
from .step import BackupCounts, StepInFlight, WorkerRecord, WorkItem, partition

# Backup copies (SPEC.md 5.6): a group still out is copied to an idle worker when its owner
# usually takes longer than the copy would (a slow host), or when it is LATE_FACTOR times past
# the usual time of a group (a dead or broken owner); never sooner than BACKUP_FLOOR_S after it
# was sent, so a step's ordinary spread does not cost a wasted computation.
BACKUP_FLOOR_S = 0.1
LATE_FACTOR = 2.0
LOSSES_BEFORE_BYPASS = 3    # an owner whose groups copies won this often in a row gets no work...
PROBE_EVERY = 4             # ...except every 4th step, to show whether it is still slow
RECENT_STEPS = 4            # finished steps whose late pushes are still answered `duplicate`
CHAIN_PAUSE_MAX = 256       # steps without a relay chain after chains broke again and again
CHAIN_PROBE_EVERY = 32      # every 32nd step goes without a chain: each worker's own link is timed
SLOW_LINK_FACTOR = 3.0      # a worker whose link costs this much more than most workers' (and
SLOW_LINK_MARGIN_S = 0.1    # this much more in seconds) stays off chains: it would slow them all


class ParameterServer:
    def __init__(self, state: TrainState, corpus: Corpus, liveness_s: float = LIVENESS_S,
                 relaying: bool = True):
        self.state = state
        self.relaying = relaying        # off where the relay would bypass CurveZMQ (SPEC.md 4.5)
        # what an abandoned chain asks of the service: ("direct", token, group) and ("params", token)
        self.chain_orders: list[tuple] = []
        self.last_relayed = False       # whether the last step's gradient came as a chain's sum
        # after a chain breaks (a relay link that does not carry, a late worker), steps go without
        # one for a while: 2, 4, 8 ... steps while they keep breaking; one that works resets it
        self.chain_pause, self.chains_from_step = 0, 0
        self.corpus = corpus
        self.liveness_s = liveness_s
        self.workers: dict[int, WorkerRecord] = {}
        self.in_flight: StepInFlight | None = None
        # (token, step, group) accepted in the last finished steps: a late repeat is a duplicate
        self.recently_accepted: set[tuple[int, int, tuple[int, ...]]] = set()
        # (token, step, group) -> when that work was sent, for recent steps; None once its push came
        self.sent_at: dict[tuple[int, int, tuple[int, ...]], float | None] = {}
        self.step_backups, self.total_backups = BackupCounts(), BackupCounts()
        self.wire_params: tuple[int, np.ndarray | None] = (-1, None)
        self.gradient_pieces = GradientPieces(state.layout.pieces, state.params.dtype)
        self._tokens = itertools.count(int.from_bytes(np.random.default_rng().bytes(4), "little") << 20)

    # roster -------------------------------------------------------------------------------
    def register(self, identity: bytes, name: str, now: float, relay: str = "") -> int:
        """A new incarnation: any earlier registration from the same socket is forgotten; its
        unfinished groups become orphaned_work(), which the caller dispatches after welcoming."""
        for old in [t for t, w in self.workers.items() if w.identity == identity]:
            del self.workers[old]
            self.gradient_pieces.forget(old)
        token = next(self._tokens)
        self.workers[token] = WorkerRecord(token, identity, name, now, relay=relay)
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
        self.gradient_pieces.forget(token)
        flight = self.in_flight
        if flight is None:
            return []
        if flight.chain is not None and flight.chain.involves(token) and flight.chain.total is None:
            self.abandon_chain(broken=False)
            for group in [g for g, c in flight.received.items() if c.grad is None and flight.accepted_from[g] == token]:
                del flight.received[group]      # its gradient died with it: the group is computed again
                flight.owner[group] = token
        copies_lost = [g for g, t in flight.backup.items() if t == token and g not in flight.received]
        flight.backup = {g: t for g, t in flight.backup.items() if t != token}
        work = self._reassign([g for g, t in flight.owner.items() if t == token and g not in flight.received])
        for group in copies_lost:           # a bypassed owner must now compute its group itself
            if group in flight.bypassed and flight.owner[group] in self.workers:
                flight.bypassed.discard(group)
                work.append(WorkItem(flight.owner[group], flight.step, group))
        return work

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
        """Partitions the chunks over the live workers (in token order) for the next step. The
        group of an owner that keeps losing to copies goes straight to a copy on a steady worker,
        after that worker's own group (a slow host is routed around; the partition, and so every
        bit of the result, stays the same)."""
        if self.in_flight is not None or not self.workers:
            return []
        step = self.state.step
        chained = self._chainable(step)         # which worker holds which group changes no bit:
        tokens = chained + [t for t in sorted(self.workers) if t not in chained]   # a chain is a prefix
        groups = partition(self.state.config.chunks, len(tokens))
        self.in_flight = flight = StepInFlight(step, dict(zip(groups, tokens)))
        pieces = self.gradient_pieces
        flight.chain = RelayChain.plan(list(zip(groups, chained)), {t: self.workers[t].relay for t in chained},
                                       pieces.pieces, pieces.dtype)
        steady = [t for t in tokens if self.workers[t].lost_in_a_row < LOSSES_BEFORE_BYPASS]
        own, copies = [], []
        for group, token in zip(groups, tokens):
            if token in steady or not steady or step % PROBE_EVERY == 0:
                own.append(WorkItem(token, step, group))
                continue
            load = {t: sum(item.token == t for item in copies) for t in steady}
            copy = min(steady, key=lambda t: (load[t], self.workers[t].usual_per_chunk() or float("inf"), t))
            flight.backup[group] = copy
            flight.bypassed.add(group)
            self.step_backups.issued += 1
            copies.append(WorkItem(copy, step, group))
        return own + copies

    def _chainable(self, step: int) -> list[int]:
        """The workers that join this step's relay chain (SPEC.md 4.5), in token order: those
        that offer a relay, are steady, and whose own link was timed and is not slow."""
        if not self.relaying or step < self.chains_from_step or step % CHAIN_PROBE_EVERY == 0:
            return []
        usual = {t: statistics.median(w.overheads) for t, w in self.workers.items() if w.overheads}
        if not usual:
            return []
        most = statistics.median(usual.values())
        return [t for t, worker in sorted(self.workers.items())
                if worker.relay and worker.lost_in_a_row < LOSSES_BEFORE_BYPASS and t in usual
                and usual[t] <= max(SLOW_LINK_FACTOR * most, most + SLOW_LINK_MARGIN_S)]

    def work_fields(self, item: WorkItem) -> dict:
        """The `work` header: what to compute, and what determines its dropout masks."""
        config, chain = self.state.config, self._chain_of(item)
        return {"token": item.token, "step": item.step, "chunks": list(item.group),
                "dropout": config.dropout, "seed": config.seed,
                "wire": WIRE_TAGS[config.wire_dtype] or np.dtype(config.dtype).str,
                **(chain.links(item.group, item.token) if chain else NO_LINKS)}

    def sends_params(self, item: WorkItem) -> bool:
        """Whether the coordinator sends this work's parameters itself (else a relay chain does)."""
        chain = self._chain_of(item)
        return chain is None or chain.sends_params(item.group, item.token)

    def _chain_of(self, item: WorkItem) -> RelayChain | None:
        flight = self.in_flight
        return flight.chain if flight is not None and flight.step == item.step else None

    def work_arrays(self, item: WorkItem) -> dict[str, np.ndarray]:
        chunk_ids = list(item.group)
        inputs, targets = self.corpus.window(self.state.step_in_epoch, chunk_ids)
        return {"h": self.state.chunk_h[:, chunk_ids], "c": self.state.chunk_c[:, chunk_ids],
                "inputs": inputs, "targets": targets}

    def param_pieces(self) -> list[np.ndarray]:
        """The current parameters on the wire, piece by piece (SPEC.md 4.4), in sending order."""
        if self.wire_params[0] != self.state.step:      # narrowed once per step, sent to all
            self.wire_params = (self.state.step, narrow(self.state.params, self.state.config.wire_dtype))
        return [self.wire_params[1][start:stop] for start, stop in self.gradient_pieces.pieces]

    def dispatched(self, item: WorkItem, now: float) -> None:
        self.sent_at[(item.token, item.step, item.group)] = now

    def accept_push(self, token: int, step: int, group: tuple[int, ...], contribution: Contribution,
                    now: float | None = None) -> tuple[str, str | None]:
        """Returns (status, reason): "accepted" or "duplicate" (answered with ack), "refused" (the
        worker sent something wrong: counts toward dropping it) or "stale" (an old step). A
        contribution without a gradient takes the one its `grad` pieces assembled."""
        if token not in self.workers:
            return "stale", "unknown or expired token"
        key, flight = (token, step, group), self.in_flight
        if self.sent_at.get(key) is not None and now is not None:
            wall = now - self.sent_at[key]
            self.workers[token].walls_per_chunk.append(wall / len(group))
            if flight is not None and step == flight.step and not flight.chained(group):
                self.workers[token].overheads.append(max(0.0, wall - contribution.compute_s))
            self.sent_at[key] = None
        if flight is not None and step == flight.step and group in flight.owner and token in flight.copies(group):
            if group in flight.received:
                return "duplicate", None
            if contribution.grad is None:       # a push closes the pieces sent before it (SPEC.md 4.4)
                contribution.grad = self.gradient_pieces.take(token, step, group)
            if contribution.grad is None and not flight.chained(group):
                return "refused", "push before every piece of its gradient arrived (SPEC.md 4.4)"
            flight.received[group] = contribution
            flight.accepted_from[group] = token
            if flight.chain is not None and len(flight.received) == len(flight.owner) and now is not None:
                flight.chain.all_pushed_at = now
            if flight.backup.get(group) == token:
                self.step_backups.won += 1
                owner = self.workers.get(flight.owner[group])
                if owner is not None:
                    owner.lost_in_a_row += 1
            else:
                self.workers[token].lost_in_a_row = 0
            return "accepted", None
        if key in self.sent_at or key in self.recently_accepted:
            return "duplicate", None
        if flight is not None and step == flight.step:
            return "refused", f"chunks {list(group)} are not assigned to this worker for step {step}"
        return "stale", f"step {step} is not the step in flight (next is {self.state.step})"

    def accept_piece(self, token: int, step: int, group: tuple[int, ...], piece: int, array: np.ndarray,
                     prefix: bool = False) -> bool:
        """Keeps a gradient piece of work that `token` holds in the step in flight and whose
        gradient is not in yet, or a piece of the relay chain's sum; False (dropped: its push
        will be answered) otherwise."""
        flight = self.in_flight
        if token not in self.workers or flight is None or step != flight.step or group not in flight.owner:
            return False
        if prefix:
            return flight.chain is not None and flight.chain.keep(token, step, group, piece, array)
        taken = flight.received.get(group)
        if token not in flight.copies(group) or (taken is not None and taken.grad is not None):
            return False
        self.gradient_pieces.keep(token, step, group, piece, array)
        if taken is not None and self.gradient_pieces.complete(token):     # after a `direct`
            taken.grad = self.gradient_pieces.take(token, step, group)
        return True

    def abandon_chain(self, broken: bool = True) -> None:
        """The step goes on without its chain (SPEC.md 4.5): every chained group's holder sends
        its own gradient, and whoever has not pushed gets the parameters directly. broken: the
        chain failed to carry (not a worker that died), so the next steps go without one."""
        flight = self.in_flight
        chain = flight.chain if flight is not None else None
        if chain is None or not chain.active or chain.total is not None:
            return
        chain.active = False
        if broken:
            self.chain_pause = min(max(2, 2 * self.chain_pause), CHAIN_PAUSE_MAX)
            self.chains_from_step = flight.step + 1 + self.chain_pause
        for group in chain.groups:
            token = flight.accepted_from.get(group, flight.owner[group])
            if token in self.workers:
                self.chain_orders.append(("direct", token, group))
                if group not in flight.received:
                    self.chain_orders.append(("params", token))

    def take_chain_orders(self) -> list[tuple]:
        orders, self.chain_orders = self.chain_orders, []
        return orders

    def check_chain(self, now: float) -> None:
        """Abandons a chain whose sum is overdue, or one with a late group: a stalled worker
        also holds up the parameters it should forward, so no one would be idle for a copy."""
        flight = self.in_flight
        chain = flight.chain if flight is not None else None
        if chain is None or not chain.active or chain.total is not None:
            return
        if chain.overdue(now) or any(self._late(group, now, None) for group in flight.outstanding()):
            self.abandon_chain()

    def backup_work(self, now: float) -> list[WorkItem]:
        """Copies of late groups of the step in flight for idle workers (SPEC.md 5.6)."""
        flight = self.in_flight
        if flight is None:
            return []
        outstanding = flight.outstanding()
        busy = {t for g in outstanding for t in flight.copies(g)}
        idle = sorted((t for t in self.workers if t not in busy),
                      key=lambda t: (self.workers[t].usual_per_chunk() or float("inf"), t))
        work = []
        for group in sorted((g for g in outstanding if g not in flight.backup),
                            key=lambda g: self.sent_at.get((flight.owner[g], flight.step, g)) or now):
            if not idle:
                break
            if self._late(group, now, self.workers[idle[0]].usual_per_chunk()):
                self.abandon_chain()        # a copy computes off the chain
                token = idle.pop(0)
                flight.backup[group] = token
                self.step_backups.issued += 1
                work.append(WorkItem(token, flight.step, group))
        return work

    def _late(self, group: tuple[int, ...], now: float, copy_per_chunk: float | None) -> bool:
        flight = self.in_flight
        owner = self.workers.get(flight.owner[group])
        sent = self.sent_at.get((flight.owner[group], flight.step, group))
        if owner is None or sent is None or now - sent < BACKUP_FLOOR_S:
            return False
        walls = [w for worker in self.workers.values() for w in worker.walls_per_chunk]
        if walls and now - sent > LATE_FACTOR * statistics.median(walls) * len(group):
            return True
        owner_per_chunk = owner.usual_per_chunk()
        return (owner_per_chunk is not None and copy_per_chunk is not None
                and sent + owner_per_chunk * len(group) > now + copy_per_chunk * len(group))

    def collect(self) -> dict[tuple[int, ...], Contribution]:
        """Ends the step in flight once every group has arrived: its contributions by group.
        Summing them and the optimizer step are the training run's (model/run.py)."""
        flight = self.in_flight
        if flight is None or not flight.complete:
            raise RuntimeError("collect called before every chunk's contribution arrived")
        self.in_flight = None
        self.last_relayed = flight.chain is not None and flight.chain.total is not None
        if self.last_relayed:       # the chain's sum stands for every group
            self.chain_pause = 0
            for group in flight.chain.groups:
                flight.received[group].grad = None
            flight.received[flight.chain.groups[-1]].grad = flight.chain.total
        self.recently_accepted = {(token, flight.step, group) for group, token in flight.accepted_from.items()}
        self.sent_at = {key: sent for key, sent in self.sent_at.items() if key[1] > flight.step - RECENT_STEPS}
        self.total_backups.issued += self.step_backups.issued
        self.total_backups.won += self.step_backups.won
        return flight.received

    def take_backup_counts(self) -> BackupCounts:
        """This step's backup copies (for metrics.jsonl); the next step counts from zero."""
        counts, self.step_backups = self.step_backups, BackupCounts()
        return counts
