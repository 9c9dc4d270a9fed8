"""Audits (protocol/SPEC.md 5.7) as plain records beside the parameter server: which steps are
audited, what an audited step waits for, and what it found. A step is audited at random (the
operating system's random source, so no worker can predict it) or when the guard says its figures
are out of range; the verdict (verdict.py) compares, and asks the referee where two disagree."""
from __future__ import annotations

from dataclasses import dataclass, field
import secrets

import numpy as np

from model.training import Contribution
from protocol import Message
from .assembler import GradientAssembler
from .step import StepInFlight, WorkItem

AUDIT_SHARE = 1 / 40        # of steps audited at random: each costs about one step (README, Audits)
REFEREE = None              # a copy the coordinator computes itself (no other worker to ask)


@dataclass
class StepAudit:
    step: int
    reason: str                                 # "random", or why the guard called it
    copy_group: tuple[int, ...] | None          # recomputed by a second worker (or the referee)
    copier: int | None = REFEREE
    full: bool = False                          # every group against the referee: the guard's call
    copy: Contribution | None = None
    copy_pieces: GradientAssembler | None = None
    asked_at: float | None = None               # when the chain's members were sent `direct`
    sums: dict[int, Message] = field(default_factory=dict)     # token -> its `sums`

    def chain_members(self, flight: StepInFlight) -> list[tuple[tuple[int, ...], int]]:
        """(group, token) of a chain that carried: its members' own gradients are checked."""
        return list(zip(flight.chain.groups, flight.chain.tokens)) if flight.summed else []

    def missing(self, flight: StepInFlight, live) -> list[str]:
        """What the audit still waits for, in words (empty: it can be judged)."""
        waiting = []
        for group, token in self.chain_members(flight):
            if token not in live:
                continue                # gone: reap or bye handled it, nothing to wait for
            if flight.received[group].grad is None:
                waiting.append(f"the own gradient of chunks {group[0]}-{group[-1]}")
            if token not in self.sums:
                waiting.append(f"the `sums` of chunks {group[0]}-{group[-1]}")
        if (self.copier is not REFEREE and self.copier in live and self.copy is None
                and not holds(flight, self.copier, self.copy_group)):
            waiting.append(f"the copy of chunks {self.copy_group[0]}-{self.copy_group[-1]}")
        return waiting


def holds(flight: StepInFlight | None, token: int, group: tuple[int, ...]) -> bool:
    """Whether token computes group for the step in flight as its owner or its backup copy."""
    return flight is not None and token in (flight.owner.get(group), flight.backup.get(group))


class Auditor:
    """Plans audits and keeps what an audited step's copy and members send for it."""

    def __init__(self, pieces: list[tuple[int, int]], dtype, share: float = AUDIT_SHARE):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"--audit-share must be in [0, 1] (got {share})")
        self.pieces, self.dtype, self.share = pieces, np.dtype(dtype), share
        self.random = secrets.SystemRandom()
        self.current: StepAudit | None = None
        self.run = self.failed = self.guarded = 0

    def plan(self, flight: StepInFlight, arithmetic: dict[int, str]) -> list[WorkItem]:
        """Decides whether flight's step is audited; returns the copy's work (if a worker makes it).
        arithmetic: token -> what it declared; a copy goes to a worker of the owner's if any."""
        self.current = None
        if not flight.owner or self.random.random() >= self.share:
            return []
        group = self.random.choice(sorted(flight.owner))
        owner = flight.owner[group]
        others = [t for t in sorted(arithmetic) if t != owner and t not in flight.backup.values()]
        alike = [t for t in others if arithmetic[t] == arithmetic.get(owner)]
        copier = self.random.choice(alike or others) if others else REFEREE
        self.current = StepAudit(flight.step, "random", group, copier,
                                 copy_pieces=GradientAssembler(self.pieces, self.dtype))
        self.run += 1
        return [WorkItem(copier, flight.step, group)] if copier is not REFEREE else []

    def call(self, step: int, reason: str) -> StepAudit:
        """The guard asks for a full audit of the step in flight (on top of any random one)."""
        audit = self.current
        if audit is None or audit.step != step:
            self.run += 1
            audit = self.current = StepAudit(step, reason, None)
        audit.full, audit.reason = True, reason
        self.guarded += 1
        return audit

    # what the copy sends ---------------------------------------------------------------------
    def takes(self, flight: StepInFlight | None, token: int, step: int, group: tuple[int, ...]) -> bool:
        """Whether a `grad` or `push` is the audit copy's and none of the step's own: once the
        copier holds the group for the step too (a backup copy, a dead owner's group moved to
        it), its one result of that work is the step's, and the audit compares nothing there."""
        audit = self.current
        return (audit is not None and audit.copier is not REFEREE and (token, step, group) ==
                (audit.copier, audit.step, audit.copy_group) and not holds(flight, token, group))

    def release(self, flight: StepInFlight | None):
        """Once the copier holds the copy's group for the step too (a backup copy, a dead owner's
        group moved to it — its one computation then serves both), what it sent the audit is the
        step's: returned once as (token, step, group, [(piece, array)], push or None), and the audit
        checks that group with the referee instead. None otherwise."""
        audit = self.current
        if audit is None or audit.copier is REFEREE or not holds(flight, audit.copier, audit.copy_group):
            return None
        token, group = audit.copier, audit.copy_group
        held = next((h for h in audit.copy_pieces.held.get(token, []) if h.group == group), None)
        pieces = [(p, held.grad[slice(*self.pieces[p])]) for p in sorted(held.arrived)] if held else []
        push, audit.copy, audit.copier = audit.copy, None, REFEREE
        return token, audit.step, group, pieces, push

    def copy_piece(self, token: int, step: int, group: tuple[int, ...], piece: int, array: np.ndarray) -> None:
        if self.current.copy is None:
            self.current.copy_pieces.keep(token, step, group, piece, array)

    def copy_push(self, token: int, step: int, group: tuple[int, ...], contribution: Contribution) -> str | None:
        """The copy's push; why it is refused, or None."""
        audit = self.current
        if audit.copy is not None:
            return None         # a repeat: answered, changes nothing
        contribution.grad = audit.copy_pieces.take(token, step, group)
        if contribution.grad is None:
            return "push before every piece of its gradient arrived (SPEC.md 4.4)"
        audit.copy = contribution
        return None

    def take_sums(self, token: int, message: Message) -> None:
        """A chain member's `sums`, kept when this step's audit asked for it."""
        audit = self.current
        if audit is not None and audit.asked_at is not None and message["step"] == audit.step:
            audit.sums.setdefault(token, message)
