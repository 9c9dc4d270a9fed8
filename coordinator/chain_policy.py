"""When a step goes with a relay chain (SPEC.md 4.5), and whom it links: a policy that answers
questions; the parameter server plans the chain (chain.py) and acts."""
from __future__ import annotations

import statistics

from .backups import BackupPolicy
from .roster import Roster

CHAIN_PAUSE_MAX = 256       # steps without a relay chain after chains broke again and again
CHAIN_PROBE_EVERY = 32      # every 32nd step goes without a chain: each worker's own link is timed
SLOW_LINK_FACTOR = 3.0      # a worker whose link costs this much more than most workers' (and
SLOW_LINK_MARGIN_S = 0.1    # this much more in seconds) stays off chains: it would slow them all


class ChainPolicy:
    def __init__(self, roster: Roster, backups: BackupPolicy, relaying: bool):
        self.roster, self.backups = roster, backups
        self.relaying = relaying        # off where the relay would bypass CurveZMQ (SPEC.md 4.5)
        # after a chain breaks (a relay link that does not carry, a late worker), steps go without
        # one for a while: 2, 4, 8 ... steps while they keep breaking; one that works resets it
        self.pause, self.from_step = 0, 0

    def members(self, step: int) -> list[int]:
        """The workers that join this step's chain, in token order: those that offer a relay,
        are steady, and whose own link was timed and is not slow."""
        if not self.relaying or step < self.from_step or step % CHAIN_PROBE_EVERY == 0:
            return []
        workers = self.roster.workers
        usual = {t: statistics.median(w.overheads) for t, w in workers.items() if w.overheads}
        if not usual:
            return []
        most = statistics.median(usual.values())
        return [t for t, worker in sorted(workers.items())
                if worker.relay and self.backups.steady(t) and t in usual
                and usual[t] <= max(SLOW_LINK_FACTOR * most, most + SLOW_LINK_MARGIN_S * self.roster.time_scale)]

    def broke(self, step: int) -> None:
        """A chain failed to carry in `step`: the next steps go without one."""
        self.pause = min(max(2, 2 * self.pause), CHAIN_PAUSE_MAX)
        self.from_step = step + 1 + self.pause

    def carried(self) -> None:
        self.pause = 0
