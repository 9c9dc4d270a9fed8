"""ParameterServer: the coordinator's step as a plain object, with no sockets: it starts a step,
hands out its work, takes what comes back and collects the gradients in summing order, asking the
roster, the backup and the chain policy, and acts. service.py feeds it events and sends its output."""
from __future__ import annotations

import numpy as np

from model.corpus import Corpus
from model.training import Contribution, TrainState
from protocol import LIVENESS_S
from .assembler import GradientAssembler
from .backups import BackupCounts, BackupPolicy
from .chain import NO_LINKS, RelayChain
from .chain_policy import ChainPolicy
from .chain_watch import ChainWatch
from .roster import Roster, WorkerRecord
from .snapshots import JoinSnapshots
from .step import Collected, Outcome, PieceResult, PushResult, SentWork, StepInFlight, WorkItem, WorkOut, partition
from .work import WireParams, work_message


class ParameterServer:
    def __init__(self, state: TrainState, corpus: Corpus, liveness_s: float = LIVENESS_S,
                 relaying: bool = True, time_scale: float = 1.0):
        self.state, self.corpus = state, corpus
        self.roster = Roster(liveness_s, time_scale)
        self.backups = BackupPolicy(self.roster)
        self.chains = ChainPolicy(self.roster, self.backups, relaying)
        self.in_flight: StepInFlight | None = None
        self.chain_watch = ChainWatch(self.chains)
        self.sent = SentWork()
        self.step_backups, self.total_backups = BackupCounts(), BackupCounts()
        self.wire_params = WireParams(state.layout.pieces)
        self.assembler = GradientAssembler(state.layout.pieces, state.params.dtype)
        self.snapshots = JoinSnapshots()        # where the run goes back to if a worker is caught

    @property
    def workers(self) -> dict[int, WorkerRecord]:
        return self.roster.workers

    # who is there -------------------------------------------------------------------------
    def register(self, identity: bytes, name: str, now: float, relay: str = "", arithmetic: str = "",
                 key: str = "") -> int:
        """A new incarnation: any earlier registration from the same socket is forgotten; its
        unfinished groups become orphaned_work(), which the caller dispatches after welcoming."""
        token, forgotten = self.roster.register(identity, name, now, relay, arithmetic, key)
        for old in forgotten:
            self.assembler.forget(old)
        self.snapshots.keep_for(list(self.workers))
        return token

    def forget_everyone(self) -> None:
        """The run goes back (SPEC.md 5.7): no step is in flight and every worker registers again."""
        self.in_flight, self.chain_watch.orders = None, []
        self.roster.workers.clear()
        self.assembler = GradientAssembler(self.state.layout.pieces, self.state.params.dtype)
        self.sent, self.wire_params = SentWork(), WireParams(self.state.layout.pieces)

    def drop(self, token: int) -> list[WorkItem]:
        """Forgets a worker (dead or leaving); its unfinished groups go to live workers."""
        name = getattr(self.roster.remove(token), "name", token)
        self.assembler.forget(token)
        flight = self.in_flight
        if flight is None:
            return []
        if flight.chain is not None and flight.chain.involves(token) and flight.chain.total is None:
            self.chain_watch.abandon(flight, self.workers, f"its worker {name!r} is gone", broken=False)
            for group in [g for g, c in flight.received.items() if c.grad is None and flight.accepted_from[g] == token]:
                del flight.received[group]      # its gradient died with it: the group is computed again
                flight.owner[group] = token
        copies_lost = [g for g, t in flight.backup.items() if t == token and g not in flight.received]
        flight.backup = {g: t for g, t in flight.backup.items() if t != token}
        work = flight.reassign([g for g, t in flight.owner.items() if t == token and g not in flight.received],
                               self.workers)
        for group in copies_lost:           # a bypassed owner must now compute its group itself
            if group in flight.bypassed and flight.owner[group] in self.workers:
                flight.bypassed.discard(group)
                work.append(WorkItem(flight.owner[group], flight.step, group))
        return work

    def reap(self, now: float) -> tuple[list[int], list[WorkItem]]:
        """Declares workers silent past liveness_s dead. Returns (dead tokens, new work)."""
        dead = self.roster.silent(now)
        return dead, [item for token in dead for item in self.drop(token)]

    def orphaned_work(self) -> list[WorkItem]:
        """Groups of the step in flight whose owner is gone (e.g. every worker died)."""
        if self.in_flight is None:
            return []
        flight = self.in_flight
        return flight.reassign([g for g, t in flight.owner.items() if t not in self.workers and g not in flight.received],
                               self.workers)

    # the step out -------------------------------------------------------------------------
    def start_step(self) -> list[WorkItem]:
        """Partitions the chunks over the live workers (in token order) for the next step, the
        chain's members first (which worker holds which group changes no bit, so a chain is a
        prefix). The group of an owner that keeps losing to copies goes straight to a copy on a
        steady worker (a slow host is routed around; the partition, and so every bit, stays)."""
        if self.in_flight is not None or not self.workers:
            return []
        step = self.state.step
        chained = self.chains.members(step)
        tokens = chained + [t for t in sorted(self.workers) if t not in chained]
        groups = partition(self.state.config.chunks, len(tokens))
        self.in_flight = flight = StepInFlight(step, dict(zip(groups, tokens)))
        flight.chain = RelayChain.plan(list(zip(groups, chained)), {t: self.workers[t].relay for t in chained},
                                       self.assembler.pieces, self.assembler.dtype, self.param_pieces)
        steady = [t for t in tokens if self.backups.steady(t)]
        own, copies = [], []
        for group, token in zip(groups, tokens):
            copy = self.backups.bypass(step, token, steady, {t: sum(i.token == t for i in copies) for t in steady})
            if copy is None:
                own.append(WorkItem(token, step, group))
                continue
            flight.backup[group] = copy
            flight.bypassed.add(group)
            self.step_backups.issued += 1
            copies.append(WorkItem(copy, step, group))
        return own + copies

    def work_out(self, item: WorkItem, now: float | None = None) -> WorkOut:
        """The `work` for item, and who sends its parameters; recorded as sent at `now` if given."""
        flight = self.in_flight
        chain = flight.chain if flight is not None and flight.step == item.step else None
        links = chain.links(item.group, item.token) if chain else NO_LINKS
        if now is not None:
            self.sent.sent((item.token, item.step, item.group), now)
            self.snapshots.working(self.state, item.token)
        return WorkOut(item.token, work_message(self.state, self.corpus, item.token, item.step, item.group, links),
                       chain is None or chain.sends_params(item.group, item.token))

    def param_pieces(self) -> list[np.ndarray]:
        """The current parameters on the wire, piece by piece (SPEC.md 4.4), in sending order."""
        return self.wire_params.of(self.state)

    # what comes back ----------------------------------------------------------------------
    def accept_piece(self, token: int, step: int, group: tuple[int, ...], piece: int, array: np.ndarray,
                     prefix: bool = False) -> PieceResult:
        """Keeps a gradient piece of work that `token` holds in the step in flight and whose
        gradient is not in yet, or a piece of the relay chain's sum from its last worker; else
        drops it (its push will be answered), refusing what breaks SPEC.md 4.5."""
        flight = self.in_flight
        if token not in self.workers or flight is None or step != flight.step or group not in flight.owner:
            return PieceResult(False)
        chain = flight.chain
        problem = RelayChain.piece_problem(chain, token, group, prefix) or (
            RelayChain.sum_dtype_problem(array, self.state.config) if prefix else None)
        if problem:                     # a sum from the wrong worker is answered (SPEC.md 4.5)
            return PieceResult(False, problem, answer=prefix)
        if prefix:
            return PieceResult(chain.keep(token, step, group, piece, array))
        taken = flight.received.get(group)
        if token not in flight.copies(group) or (taken is not None and taken.grad is not None):
            return PieceResult(False)
        self.assembler.keep(token, step, group, piece, array)
        if taken is not None and self.assembler.complete(token, step, group):     # after a `direct`
            taken.grad = self.assembler.take(token, step, group)
        return PieceResult(True)

    def accept_push(self, token: int, step: int, group: tuple[int, ...], contribution: Contribution,
                    now: float | None = None) -> PushResult:
        """A push closes the pieces sent before it (SPEC.md 4.4): a contribution without a
        gradient takes the one its `grad` pieces assembled."""
        if token not in self.workers:
            return PushResult(Outcome.STALE, "unknown or expired token")
        key, flight = (token, step, group), self.in_flight
        current = flight is not None and step == flight.step
        wall = self.sent.answered(key, now)
        if wall is not None:
            self.roster.timed(token, wall, len(group), max(0.0, wall - contribution.compute_s)
                              if current and not flight.chained(group) else None)
        if current and group in flight.owner and token in flight.copies(group):
            if group in flight.received:
                return PushResult(Outcome.DUPLICATE)
            if contribution.grad is None:
                contribution.grad = self.assembler.take(token, step, group)
            if contribution.grad is None and not flight.chained(group):
                return PushResult(Outcome.REFUSED, "push before every piece of its gradient arrived (SPEC.md 4.4)")
            flight.accept(group, token, contribution, now)
            self.backups.accepted(flight, group, token, self.step_backups)
            return PushResult(Outcome.ACCEPTED)
        if self.sent.known(key):
            return PushResult(Outcome.DUPLICATE)
        if current:
            return PushResult(Outcome.REFUSED, f"chunks {list(group)} are not assigned to this worker for step {step}")
        return PushResult(Outcome.STALE, f"step {step} is not the step in flight (next is {self.state.step})")

    # when something is late ---------------------------------------------------------------
    def check_chain(self, now: float) -> None:
        """The chain watch (chain_watch.py) is told of late groups and the time."""
        flight = self.in_flight
        if ChainWatch.open_chain(flight) is not None:
            late = [g for g in flight.outstanding() if self.backups.late(flight, g, self._sent(g), now, None)]
            self.chain_watch.check(flight, self.workers, late, now, self.roster.time_scale)

    def backup_work(self, now: float) -> list[WorkItem]:
        """Copies of late groups of the step in flight for idle workers (SPEC.md 5.6)."""
        flight = self.in_flight
        if flight is None:
            return []
        idle, work = self.backups.idle(flight), []
        for group in sorted((g for g in flight.outstanding() if g not in flight.backup),
                            key=lambda g: self._sent(g) or now):
            if not idle:
                break
            # a chained group waits for hops its owner's history does not show: late only when far past
            # the usual (a dead or stalled member), never because an idle worker's copy looks faster
            chained = flight.chain is not None and flight.chain.active and group in flight.chain.groups
            copy_per_chunk = None if chained else self.workers[idle[0]].usual_per_chunk()
            if self.backups.late(flight, group, self._sent(group), now, copy_per_chunk):
                self.chain_watch.abandon(flight, self.workers, f"chunks {group[0]}-{group[-1]} get a backup copy")
                token = idle.pop(0)
                flight.backup[group] = token
                self.step_backups.issued += 1
                work.append(WorkItem(token, flight.step, group))
        return work

    def _sent(self, group: tuple[int, ...]) -> float | None:
        """When the step in flight's group went to its owner."""
        flight = self.in_flight
        return self.sent.when((flight.owner[group], flight.step, group))

    # the step in --------------------------------------------------------------------------
    def collect(self) -> Collected:
        """Ends the step in flight once every group has arrived. Summing the gradients and the
        optimizer step are the training run's (model/run.py, model/step.py)."""
        flight = self.in_flight
        if flight is None or not flight.complete:
            raise RuntimeError("collect called before every chunk's contribution arrived")
        self.in_flight = None
        if flight.summed:
            self.chains.carried()
        self.sent.finished(flight)
        self.total_backups.issued += self.step_backups.issued
        self.total_backups.won += self.step_backups.won
        return Collected(flight.received, flight.gradients(), flight.summed)

    def take_backup_counts(self) -> BackupCounts:
        """This step's backup copies (for metrics.jsonl); the next step counts from zero."""
        counts, self.step_backups = self.step_backups, BackupCounts()
        return counts
