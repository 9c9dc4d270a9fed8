"""What a worker holds for the works it was given, as plain records: per work (its computation
and where its gradient goes), per step (the parameters that arrive for it and where they are
forwarded), and relayed sums that came before their work. One rule says what is stale."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
import json

from protocol import Message
from .chain import ChainSums
from .compute import IncomingParams, ParamsWatch

STEPS_OF_PARAMS = 2     # steps whose parameter pieces are kept at once: the current and the next


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
    """A step's parameters as they arrive, and where this worker forwards them (SPEC.md 4.5)."""
    params: IncomingParams
    forward_to: str = ""
    forwarded: int = 0

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

    def __init__(self):
        self.works: dict[tuple, Work] = {}
        self.steps: dict[int, StepInputs] = {}
        self.early_sums: dict[int, list[Message]] = {}      # step -> sums relayed before its work came
        self.token: int | None = None
        self.latest_step = -1

    def stale(self, token: int | None, step: int) -> bool:
        return token != self.token or step < self.latest_step

    def expects(self, step: int) -> bool:
        """Whether pieces for `step` are worth keeping: a relay may run ahead of the work."""
        return self.latest_step <= step <= self.latest_step + 1

    def inputs(self, step: int, new_params) -> StepInputs:
        """The step's inputs, made with new_params() when first asked for; the oldest steps'
        go so that at most STEPS_OF_PARAMS are kept."""
        if step not in self.steps:
            for old in sorted(self.steps)[:max(0, len(self.steps) - STEPS_OF_PARAMS + 1)]:
                self.steps.pop(old).params.abort()
            self.steps[step] = StepInputs(new_params())
        return self.steps[step]

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
