"""What a worker holds for the works it was given, as plain records: per work (its computation
and where its gradient goes), per step (the parameters that arrive for it and where they are
forwarded), and relayed sums that came before their work. One rule says what is stale."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
import json

from protocol import Message
from protocol.relay_auth import digest, same
from .chain import ChainSums
from .compute import IncomingParams, ParamsWatch

STEPS_OF_PARAMS = 2     # steps whose parameter pieces are kept at once: the current and the next
# Relayed pieces and sums held unchecked before their work (and its digests and keys) came, per
# piece: a forger who sends first cannot crowd out the real one with fewer copies than this, and
# one who sends more only delays the step (the chain is abandoned), never changes it.
UNCHECKED_PER_PIECE = 4


def trace_line(push: Message, received: float, waited_s: float, computed: float) -> str:
    """scripts/netbench.py's timings of one push: received, the work arrived; waited_s,
    computing waited for parameter pieces; computed, the push was sent."""
    return json.dumps({"step": push["step"], "chunks": push["chunks"], "received": received,
                       "waited_s": waited_s, "computed": computed, "compute_s": push["compute_s"]})


def key_of(message: Message) -> tuple:
    """What a `work` (and what the worker sends back for it) names: (token, step, chunks)."""
    return message["token"], message["step"], tuple(message["chunks"])


@dataclass
class Work:
    """One `work`: its computation, its wait for parameters, and its gradient's route (kept
    after the computation for a `direct`, until a later step)."""
    key: tuple
    route: ChainSums
    watch: ParamsWatch
    received_at: float
    future: Future | None = None
    timings: dict = field(default_factory=dict)

    @property
    def computing(self) -> bool:
        """Submitted and not yet finished by the session (finish() lets go of the future)."""
        return self.future is not None

    def abandon(self) -> None:
        if self.future is not None:
            self.future.cancel()        # not started: never runs
        self.watch.abort()              # waiting for parameters: gives up


@dataclass
class StepInputs:
    """A step's parameters as they arrive, where this worker forwards them, and what relayed
    pieces are checked against (SPEC.md 4.5): the digests its work listed, and the pieces
    relayed before that work came, held unchecked until it does."""
    params: IncomingParams
    forward_to: str = ""
    forwarded: int = 0
    digests: list[str] = field(default_factory=list)
    unchecked: dict[int, list] = field(default_factory=dict)        # piece -> candidates

    def checked(self, pieces: dict) -> tuple[list, list[str]]:
        """Of relayed candidates ({piece: [array, ...]}), the first of each piece whose digest
        matches the work's list, in order, and why each other one is dropped (SPEC.md 4.5)."""
        good, bad = [], []
        for piece in sorted(pieces):
            matching = [a for a in pieces[piece] if piece < len(self.digests) and same(self.digests[piece], digest(a))]
            good += [(piece, matching[0])] if matching else []
            bad += [f"piece {piece} does not have the digest its work lists (forged or corrupted)"] * (
                len(pieces[piece]) - len(matching))
        return good, bad

    def to_forward(self) -> list[int]:
        """The pieces that arrived and were not forwarded yet (now counted as forwarded)."""
        if not self.forward_to:
            return []
        pieces = list(range(self.forwarded, self.params.arrived))
        self.forwarded = self.params.arrived
        return pieces


class Holdings:
    """Every work and every step's inputs a session holds, and the one rule for what is stale:
    anything of another registration, or of a step older than the latest work's."""

    def __init__(self, new_params):
        self.new_params = new_params        # () -> IncomingParams for a step
        self.works: dict[tuple, Work] = {}
        self.steps: dict[int, StepInputs] = {}
        self.early_sums: dict[int, list[Message]] = {}      # step -> sums relayed before its work came
        self.token: int | None = None
        self.latest_step = -1

    def start_afresh(self) -> None:
        """A new registration: nothing held for a step is kept, because the coordinator may number
        its steps anew (a resume from an older checkpoint, a rollback after an audit, SPEC.md 5.6
        and 5.7): parameters held for a step number would be another run's."""
        self.latest_step = -1
        for inputs in self.steps.values():
            inputs.params.abort()
        self.steps.clear()
        self.early_sums.clear()

    def stale(self, token: int | None, step: int) -> bool:
        return token != self.token or step < self.latest_step

    def expects(self, step: int) -> bool:
        """Whether pieces for `step` are worth keeping: a relay may run ahead of the work; before
        the first work of a registration (latest_step -1) that is step 0 alone (SPEC.md 4.4)."""
        return self.latest_step <= step <= self.latest_step + 1

    def inputs(self, step: int) -> StepInputs:
        """The step's inputs, made with new_params() when first asked for; the oldest steps'
        go so that at most STEPS_OF_PARAMS are kept."""
        if step not in self.steps:
            for old in sorted(self.steps)[:max(0, len(self.steps) - STEPS_OF_PARAMS + 1)]:
                self.steps.pop(old).params.abort()
            self.steps[step] = StepInputs(self.new_params())
        return self.steps[step]

    def relayed_params(self, step: int, piece: int, array) -> tuple[list, list[str]]:
        """A relayed parameter piece: (pieces fit to use now, why any is dropped). Before the
        step's work has listed digests it is held, one copy per piece."""
        inputs = self.inputs(step)
        if inputs.digests:
            return inputs.checked({piece: [array]})
        if any(key[1] == step for key in self.works):
            return [], ["its work gets its parameters from the coordinator"]
        candidates = inputs.unchecked.setdefault(piece, [])
        if len(candidates) < UNCHECKED_PER_PIECE:
            candidates.append(array)
        return [], []

    def relayed_sum(self, message: Message, pieces: int) -> tuple[Work | None, str | None]:
        """The work a relayed sum is for (its MAC still to check), else None and why it is
        dropped; one that comes before its work is held for it (UNCHECKED_PER_PIECE a piece)."""
        step = message["step"]
        work = next((w for k, w in self.works.items()
                     if k[0] == self.token and k[1] == step and w.route.follows(message["chunks"])), None)
        if work is not None:
            return work, None
        if self.expects(step) and not any(k[1] == step for k in self.works):
            early = self.early_sums.setdefault(step, [])
            if len(early) < UNCHECKED_PER_PIECE * pieces:
                early.append(message)
            return None, None
        return None, f"no work of step {step} takes a sum of chunks {message['chunks'][0]}-{message['chunks'][-1]}"

    def finished(self, key: tuple) -> tuple[Work, Future, ChainSums | None]:
        """A work's computation ended: (the work, its future, its route if the work is done with:
        off any chain, or stale; a chained one is kept for a `direct` until a later step)."""
        work = self.works[key]
        future, work.future = work.future, None
        if work.route.in_chain and not self.stale(key[0], key[1]):
            return work, future, None
        del self.works[key]
        return work, future, work.route

    def relay_targets(self) -> set[str]:
        """The relay endpoints some work still sends to."""
        return {w.route.sum_to for w in self.works.values()} | {i.forward_to for i in self.steps.values()}

    def digests_listed(self, step: int, digests: list[str]) -> tuple[list, list[str]]:
        """A work listed its step's digests: the pieces held for it that match, and why others drop."""
        inputs = self.inputs(step)
        if not digests or inputs.digests:
            return [], []
        inputs.digests, held = digests, inputs.unchecked
        inputs.unchecked = {}
        return inputs.checked(held)

    def prune(self) -> list[ChainSums]:
        """Forgets what is stale: its works are abandoned, its steps' parameters let go. Returns
        the routes of works that were dropped, whose buffers the caller retires."""
        for key, work in self.works.items():
            if self.stale(key[0], key[1]) and work.computing:
                work.abandon()
        for step in [s for s in self.steps if s < self.latest_step]:
            self.steps.pop(step).params.abort()
        for step in [s for s in self.early_sums if s < self.latest_step]:
            del self.early_sums[step]
        dropped = [k for k, w in self.works.items() if self.stale(k[0], k[1]) and not w.computing]
        return [self.works.pop(key).route for key in dropped]

    def clear(self) -> None:
        for work in self.works.values():
            work.abandon()
        for inputs in self.steps.values():
            inputs.params.abort()
