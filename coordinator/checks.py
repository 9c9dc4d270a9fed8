"""What happens to a step once every result is in, before the training run may use it
(protocol/SPEC.md 5.7): the guard looks at its figures, an audited step waits for its copy and its
chain's own gradients and is judged, and a worker found wrong is stopped, refused for the rest
of the run, and the run goes back to a state from before that worker's first step."""
from __future__ import annotations

import numpy as np

from model.corpus import Corpus
from model.rewind import Rewind
from protocol import Message
from .audit import AUDIT_SHARE, Auditor, StepAudit
from .guard import StepGuard
from .referee import Referee
from .sender import Sender
from .server import ParameterServer
from .step import WorkItem
from .verdict import Judge, Verdict


WAITING = "waiting"         # settle(): an audit of the step still waits for results


class StepChecks:
    def __init__(self, server: ParameterServer, sender: Sender, corpus: Corpus, liveness_s: float, log,
                 notes_log, share: float = AUDIT_SHARE):
        pieces = server.state.layout.pieces
        self.server, self.sender, self.liveness_s, self.log, self.notes_log = server, sender, liveness_s, log, notes_log
        self.auditor = Auditor(pieces, server.state.params.dtype, share)
        self.judge = Judge(Referee(corpus), pieces)
        self.guard = StepGuard()
        self.figures: tuple[int, float, float] | None = None        # (step, loss, norm) of the step in flight
        self.barred: list[str] = []

    def plan(self, work: list[WorkItem]) -> list[WorkItem]:
        """A step's work as started, plus an audit copy when the step is audited."""
        flight = self.server.in_flight
        if flight is None or not work:
            return work
        return work + self.auditor.plan(flight, {t: w.arithmetic for t, w in self.server.workers.items()})

    def settle(self, now: float) -> StepAudit | Rewind | str | None:
        """For a step whose results are all in: WAITING while an audit waits, a Rewind when a
        worker was found wrong, else the audit it passed (None: the step was not audited)."""
        server, flight = self.server, self.server.in_flight
        if self.figures is None or self.figures[0] != flight.step:
            gradients = flight.gradients()
            loss = sum(c.loss for c in flight.received.values()) / server.state.predictions_per_step
            norm = float(np.sqrt(sum(float(np.dot(g, g)) for g in gradients)))
            self.figures = (flight.step, loss, norm)
            reason = self.guard.out_of_range(loss, norm)
            if reason:
                self.log(f"step {flight.step}: {reason}; auditing every result of the step")
                self.auditor.call(flight.step, reason)
        audit = self.auditor.current
        if audit is None or audit.step != flight.step:
            return self.passed(None)
        live = server.workers
        if audit.asked_at is None:
            audit.asked_at = now
            for group, token in audit.chain_members(flight):
                self.sender.send(token, Message("direct", {"step": flight.step, "chunks": list(group)}))
        missing = audit.missing(flight, live)
        if missing and now - audit.asked_at <= self.liveness_s:
            return WAITING
        verdict = self.judge.judge(audit, flight, server.state, {t: w.arithmetic for t, w in live.items()}, live)
        for group, token in audit.chain_members(flight):
            if token in live and (flight.received[group].grad is None or token not in audit.sums):
                verdict.name(token, f"it did not answer the audit of step {flight.step} within {self.liveness_s:g}s")
        if audit.copy is None and audit.copier is not None and missing:
            verdict.notes.append(f"the audit copy of step {flight.step} did not come within {self.liveness_s:g}s")
        for note in verdict.notes:
            self.notes_log(f"audit of step {flight.step}: {note}")
        return self.passed(audit) if verdict.passed else self.convict(verdict, audit)

    def passed(self, audit: StepAudit | None) -> StepAudit | None:
        self.guard.record(*self.figures[1:])
        self.auditor.current = None
        return audit

    def convict(self, verdict: Verdict, audit: StepAudit) -> Rewind:
        server = self.server
        self.auditor.failed += 1
        how = "a random audit" if audit.reason == "random" else f"an audit the guard called ({audit.reason})"
        for token, words in verdict.wrong.items():
            worker = server.workers[token]
            keyed = (f"; it came with the CurveZMQ key {worker.key}: remove that key from the authorized keys to "
                     f"keep it out of later runs (give each worker its own key)" if worker.key else "")
            self.log(f"audit of step {audit.step} ({how}): worker {worker.name!r} is wrong — {words}; it is "
                     f"stopped and refused for the rest of this run{keyed}")
            self.sender.send(token, Message("stop", {"reason": f"an audit found this worker's results wrong "
                                                               f"({words}); check its hardware and software"}))
            server.roster.bar(worker.identity, worker.name)
            self.barred.append(worker.name)
        back_to = min((server.snapshots.before(t) for t in verdict.wrong), key=lambda s: s.step)
        names = ", ".join(repr(server.workers[t].name) for t in verdict.wrong)
        server.forget_everyone()
        server.snapshots.rewound_to(back_to.step)
        self.guard.forget()
        self.auditor.current, self.figures = None, None
        return Rewind(back_to, f"an audit at step {audit.step} found {names} wrong, and step {back_to.step} "
                               f"is the last state from before it computed anything")

    def summary(self) -> str:
        auditor = self.auditor
        barred = f"; barred: {', '.join(map(repr, self.barred))}" if self.barred else ""
        return (f"audits: {auditor.run} run ({auditor.guarded} called by the guard), {auditor.failed} failed"
                f"{barred}")
