"""An audited step's verdict (protocol/SPEC.md 5.7): its copies and its chain compared, and where
they disagree, the referee's own computation deciding who is wrong. Plain functions and records."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.training import Contribution, TrainState
from model.wire import narrow_sums, round_to_wire_
from protocol.relay_auth import digest
from .audit import REFEREE, StepAudit
from .referee import Referee, difference
from .step import StepInFlight


@dataclass
class Verdict:
    wrong: dict[int, str] = field(default_factory=dict)    # token -> what it got wrong, in words
    notes: list[str] = field(default_factory=list)         # what was checked and could not be decided

    @property
    def passed(self) -> bool:
        return not self.wrong

    def name(self, token: int, words: str) -> None:
        self.wrong.setdefault(token, words)


class Judge:
    """Compares an audited step's results; asks the referee only where something disagrees."""

    def __init__(self, referee: Referee, pieces: list[tuple[int, int]]):
        self.referee, self.pieces = referee, pieces
        self.recomputed: dict[tuple[int, ...], Contribution] = {}

    def reference(self, state: TrainState, group: tuple[int, ...]) -> Contribution:
        if group not in self.recomputed:
            self.recomputed[group] = self.referee.compute(state, group)
        return self.recomputed[group]

    def against_referee(self, verdict: Verdict, state: TrainState, group, token, result: Contribution,
                        arithmetic: dict[int, str], what: str) -> None:
        problem = difference(result, self.reference(state, group), self.pieces,
                             arithmetic.get(token) == self.referee.arithmetic)
        if problem:
            verdict.name(token, f"{what} of chunks {group[0]}-{group[-1]} at step {state.step}: {problem}")

    def judge(self, audit: StepAudit, flight: StepInFlight, state: TrainState, arithmetic: dict[int, str],
              live) -> Verdict:
        self.recomputed = {}
        verdict = Verdict()
        members = [(g, t) for g, t in audit.chain_members(flight) if t in live]
        self.chain(verdict, audit, flight, state, members, arithmetic)
        if audit.copy_group is not None:
            self.copy(verdict, audit, flight, state, arithmetic, live)
        if audit.full:
            for group, contribution in sorted(flight.received.items()):
                token = flight.accepted_from[group]
                if contribution.grad is not None and token in live:
                    self.against_referee(verdict, state, group, token, contribution, arithmetic, "its result")
        return verdict

    def copy(self, verdict: Verdict, audit: StepAudit, flight: StepInFlight, state: TrainState, arithmetic,
             live) -> None:
        group = audit.copy_group
        own, owner = flight.received.get(group), flight.accepted_from.get(group)
        if own is None or own.grad is None or owner not in live:
            verdict.notes.append(f"the owner of chunks {group[0]}-{group[-1]} left before its result could be compared")
            return
        if audit.copier is REFEREE:
            self.against_referee(verdict, state, group, owner, own, arithmetic, "its result")
            return
        if audit.copy is None:
            verdict.notes.append(f"the copy of chunks {group[0]}-{group[-1]} did not come (or its worker came to "
                                 f"hold the group itself); not compared")
            return
        alike = arithmetic.get(owner) == arithmetic.get(audit.copier)
        if difference(own, audit.copy, self.pieces, alike) is None:
            return
        self.against_referee(verdict, state, group, owner, own, arithmetic, "its result")
        self.against_referee(verdict, state, group, audit.copier, audit.copy, arithmetic, "its copy")
        if verdict.passed:
            verdict.notes.append(f"chunks {group[0]}-{group[-1]}: owner and copy differ, and each agrees with "
                                 f"the referee within the tolerance of their arithmetics")

    def chain(self, verdict: Verdict, audit: StepAudit, flight: StepInFlight, state: TrainState,
              members: list, arithmetic) -> None:
        """The members' own gradients added as the chain adds them (SPEC.md 4.5) must be its sum; if
        not, the referee checks each own gradient and the `sums` digests find the wrong link."""
        if not members or len(members) < len(flight.chain.groups) or any(
                flight.received[g].grad is None or t not in audit.sums for g, t in members):
            return              # a member left, or did not answer (checks.py names the one that did not)
        prefixes, total = [], None
        rounded = narrow_sums(state.config)
        for group, _ in members:
            own = flight.received[group].grad
            total = own.copy() if total is None else np.add(total, own)
            if rounded and prefixes:           # rounded at each link, as the chain does
                round_to_wire_(total, state.config.wire_dtype, self.pieces)
            prefixes.append(total)
        if np.array_equal(total, flight.chain.total):
            return
        for group, token in members:
            self.against_referee(verdict, state, group, token, flight.received[group], arithmetic, "its own gradient")
        if not verdict.passed:
            return
        largest = float(np.max(np.abs(flight.chain.total.astype(np.float64) - total)))
        expected = [[digest(p[start:stop]) for start, stop in self.pieces] for p in prefixes]
        received = [audit.sums[t]["sum_in"] for _, t in members]
        sent = [audit.sums[t]["sum_out"] for _, t in members]
        arrived = [digest(flight.chain.total[start:stop]) for start, stop in self.pieces]
        for k, (group, token) in enumerate(members):
            # every member before k sent what it should: k received the right sum, or a link lied
            if k and received[k] != sent[k - 1]:
                piece = first_difference(received[k], sent[k - 1])
                words = (f"the relay link into chunks {group[0]}-{group[-1]} at step {state.step}: its two ends "
                         f"report different sums for piece {piece} (they share the link's key, so either may "
                         f"lie); the chain's sum was off by up to {largest:.3g}")
                verdict.name(members[k - 1][1], words)
                verdict.name(token, words)
                return
            last = k + 1 == len(members)
            if sent[k] != expected[k] or (last and arrived != sent[k]):
                piece = first_difference(sent[k] if sent[k] != expected[k] else arrived, expected[k])
                verdict.name(token, f"the sum it sent on for chunks {group[0]}-{group[-1]} at step {state.step}: "
                                    f"piece {piece} is not its own gradient added to what it received; the "
                                    f"chain's sum was off by up to {largest:.3g}")
                return
        verdict.notes.append(f"step {state.step}: the chain's sum differs from its members' gradients by up to "
                             f"{largest:.3g}, and no link could be named")


def first_difference(a: list[str], b: list[str]) -> int:
    return next((p for p, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
