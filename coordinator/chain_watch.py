"""A step's relay chain abandoned (protocol/SPEC.md 4.5) when a member is gone, a group is late or
gets a copy, or its sum is overdue: what the socket loop must send then, and why, for the log."""
from __future__ import annotations

from .chain import SendDirect, SendParams
from .chain_policy import ChainPolicy
from .roster import WorkerRecord
from .step import StepInFlight


class ChainWatch:
    def __init__(self, policy: ChainPolicy):
        self.policy = policy
        self.orders: list[SendDirect | SendParams] = []     # what an abandoned chain asks for
        self.events: list[str] = []                         # why chains were abandoned, for the log

    @staticmethod
    def open_chain(flight: StepInFlight | None):
        """The step's chain while it still carries (active, its sum not all in), else None."""
        chain = flight.chain if flight is not None else None
        return chain if chain is not None and chain.active and chain.total is None else None

    def abandon(self, flight: StepInFlight | None, workers: dict[int, WorkerRecord], reason: str,
                broken: bool = True) -> None:
        """The step goes on without its chain: holders send their own gradients, those that have
        not pushed get the parameters. broken: it failed to carry (not a worker that died), so
        the next steps go without one."""
        chain = self.open_chain(flight)
        if chain is None:
            return
        links = " -> ".join(repr(workers[t].name if t in workers else t) for t in chain.tokens)
        self.events.append(f"step {flight.step}: relay chain {links} abandoned: {reason}")
        if broken:
            self.policy.broke(flight.step)
        holder = {g: flight.accepted_from.get(g, flight.owner[g]) for g in chain.groups}
        self.orders += chain.abandon(holder, flight.received, workers)

    def check(self, flight: StepInFlight | None, workers: dict[int, WorkerRecord], late: list[tuple[int, ...]],
              now: float, time_scale: float) -> None:
        """Abandons a chain with a late group (a stalled worker also holds up the parameters it
        should forward, so no one would be idle for a copy) or whose sum is overdue."""
        chain = self.open_chain(flight)
        if chain is not None and (late or chain.overdue(now, time_scale)):
            self.abandon(flight, workers, f"chunks {late[0][0]}-{late[0][-1]} are late" if late else
                         "its sum is overdue 1 s after the last push (a relay link does not carry)")

    def take_orders(self) -> list[SendDirect | SendParams]:
        orders, self.orders = self.orders, []
        return orders

    def take_events(self) -> list[str]:
        events, self.events = self.events, []
        return events
