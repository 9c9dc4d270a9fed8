"""Backup copies (SPEC.md 5.6) as a policy that answers questions: which group of the step in
flight is late, which workers are idle, and whose group goes straight to a copy. The parameter
server acts on the answers. Which worker computes a group changes no bit of the result."""
from __future__ import annotations

from dataclasses import dataclass

from .roster import Roster
from .step import StepInFlight

# A group still out is copied to an idle worker when its owner usually takes longer than the copy
# would (a slow host), or when it is LATE_FACTOR times past the usual time of a group (a dead or
# broken owner); never sooner than BACKUP_FLOOR_S after it was sent, so a step's ordinary spread
# does not cost a wasted computation.
BACKUP_FLOOR_S = 0.1
LATE_FACTOR = 2.0
LOSSES_BEFORE_BYPASS = 3    # an owner whose groups copies won this often in a row gets no work...
PROBE_EVERY = 4             # ...except every 4th step, to show whether it is still slow


@dataclass
class BackupCounts:
    issued: int = 0
    won: int = 0            # the copy's push arrived first

    @property
    def wasted(self) -> int:
        return self.issued - self.won


class BackupPolicy:
    def __init__(self, roster: Roster):
        self.roster = roster

    def steady(self, token: int) -> bool:
        """Not one whose groups keep losing to copies."""
        return self.roster.workers[token].lost_in_a_row < LOSSES_BEFORE_BYPASS

    def bypass(self, step: int, owner: int, steady: list[int], load: dict[int, int]) -> int | None:
        """For a step being started: the steady worker that computes owner's group instead of it
        (after its own), or None when the owner computes it. load: copies each steady worker
        was already given this step."""
        if owner in steady or not steady or step % PROBE_EVERY == 0:
            return None
        workers = self.roster.workers
        return min(steady, key=lambda t: (load[t], workers[t].usual_per_chunk() or float("inf"), t))

    def accepted(self, flight: StepInFlight, group: tuple[int, ...], token: int, counts: BackupCounts) -> None:
        """A push was accepted: a copy that won counts against its group's owner; an owner that
        computed its own group first is steady again."""
        if flight.backup.get(group) == token:
            counts.won += 1
            owner = self.roster.workers.get(flight.owner[group])
            if owner is not None:
                owner.lost_in_a_row += 1
        else:
            self.roster.workers[token].lost_in_a_row = 0

    def idle(self, flight: StepInFlight) -> list[int]:
        """Workers with nothing of the step in flight to compute, fastest first."""
        busy = {t for g in flight.outstanding() for t in flight.copies(g)}
        workers = self.roster.workers
        return sorted((t for t in workers if t not in busy),
                      key=lambda t: (workers[t].usual_per_chunk() or float("inf"), t))

    def late(self, flight: StepInFlight, group: tuple[int, ...], sent: float | None, now: float,
             copy_per_chunk: float | None) -> bool:
        """Whether group, sent to its owner at `sent`, is late: far past the usual time of a
        group, or slower than a copy on a worker that takes copy_per_chunk would be."""
        owner = self.roster.workers.get(flight.owner[group])
        if owner is None or sent is None or now - sent < BACKUP_FLOOR_S * self.roster.time_scale:
            return False
        usual = self.roster.usual_wall_per_chunk()
        if usual is not None and now - sent > LATE_FACTOR * usual * len(group):
            return True
        owner_per_chunk = owner.usual_per_chunk()
        return (owner_per_chunk is not None and copy_per_chunk is not None
                and sent + owner_per_chunk * len(group) > now + copy_per_chunk * len(group))
