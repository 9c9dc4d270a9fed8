"""Where a run goes back to when a worker is caught (protocol/SPEC.md 5.7): a copy of the training
state from before each live worker's first step. A worker caught at any step may have been wrong
at every unaudited step before, so only a state from before it computed anything is clean."""
from __future__ import annotations

from model.rewind import copy_of
from model.training import TrainState

MAX_SNAPSHOTS = 8       # distinct first steps kept; a later joiner shares the newest older one


class JoinSnapshots:
    def __init__(self):
        self.by_step: dict[int, TrainState] = {}
        self.first_step: dict[int, int] = {}         # token -> the step of its first work

    def working(self, state: TrainState, token: int) -> None:
        """A work of state.step goes to token (state is still the step's start)."""
        if token in self.first_step:
            return
        self.first_step[token] = state.step
        if state.step not in self.by_step and (len(self.by_step) < MAX_SNAPSHOTS or not self.by_step):
            self.by_step[state.step] = copy_of(state)

    def before(self, token: int) -> TrainState:
        """The newest state from no later than token's first step."""
        first = self.first_step.get(token, min(self.by_step))
        return self.by_step[max(s for s in self.by_step if s <= first)]

    def keep_for(self, live: list[int]) -> None:
        """Lets go of the states no live worker would go back to."""
        needed = {self.before(t).step for t in live if t in self.first_step}
        self.first_step = {t: s for t, s in self.first_step.items() if t in live}
        if needed:
            self.by_step = {s: v for s, v in self.by_step.items() if s in needed}

    def rewound_to(self, step: int) -> None:
        """After going back to `step`: every worker starts afresh; later states are void."""
        self.first_step.clear()
        self.by_step = {s: v for s, v in self.by_step.items() if s <= step}
