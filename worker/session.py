"""One connection's life for a worker: register, take work, feed it the parameter pieces as
they come (from the coordinator or, in a relay chain, from the worker before), send the
gradient's pieces where the chain says (protocol/SPEC.md 4.4-4.5), push, heartbeat."""
from __future__ import annotations

from dataclasses import dataclass, field
import json
import os
import time
from concurrent.futures import Future

import zmq

from protocol import Message
from protocol.security import HandshakeWatch
from protocol.transport import (bind_relay, connect_dealer, connect_relay, drain, local_address_toward,
                                peak_rss_mb, poll, send)
from .chain import COORDINATOR, ChainSums
from .compute import IncomingParams, ParamsWatch, WorkAborted

STEPS_OF_PARAMS = 2     # steps whose parameter pieces are kept at once: the current and the next


@dataclass
class Job:
    """One `work` being computed."""
    future: Future
    incoming: ParamsWatch
    received_at: float
    timings: dict = field(default_factory=dict)

    def abandon(self) -> None:
        self.future.cancel()            # not started: never runs
        self.incoming.abort()           # waiting for parameters: gives up


def job_key(message: Message) -> tuple:
    """What a `work` (and what the worker sends back for it) names."""
    return message["token"], message["step"], tuple(message["chunks"])


class Session:
    def __init__(self, worker):
        self.worker = worker
        self.handshakes = HandshakeWatch(curve=worker.curve_client is not None)
        self.socket = connect_dealer(worker.context, worker.endpoint, worker.curve_client, self.handshakes.attach)
        host = local_address_toward(worker.endpoint) if worker.relaying and not worker.curve_client else None
        self.relay, self.relay_endpoint = (bind_relay(worker.context, host, worker.max_message_bytes)
                                           if host else (None, ""))
        self.peers: dict[str, zmq.Socket] = {}      # relay endpoint -> a DEALER to it
        self.token, self.welcomed = None, False
        self.jobs: dict[tuple, Job] = {}
        self.chains: dict[tuple, ChainSums] = {}    # a work's gradient and place, until a later step
        self.params: dict[int, IncomingParams] = {}     # step -> its parameters
        self.forwarding: dict[int, list] = {}       # step -> [relay endpoint, pieces forwarded]
        self.early_sums: dict[int, list[Message]] = {}  # step -> sums relayed before its work came
        self.latest_step = -1       # work for an older step is obsolete: the coordinator has moved on
        self.last_heard = self.last_sent = time.monotonic()

    # the loop -------------------------------------------------------------------------------
    def run(self) -> str:
        """Returns "stop", "lost" (never welcomed), "welcomed" (lost later) or "refused" (the
        coordinator refused this worker's CurveZMQ key, or cuts the parameters differently)."""
        worker = self.worker
        self.register()
        try:
            while not worker.stopping:
                sockets = [self.socket, worker.wake_read] + ([self.relay] if self.relay else [])
                ready = poll(sockets, worker.heartbeat_s / 2)
                now = time.monotonic()
                refusal = self.handshakes.refusal()
                if refusal:
                    worker.log(f"error: worker {worker.name}: {refusal}")
                    return "refused"
                if worker.wake_read in ready:
                    os.read(worker.wake_read, 4096)
                finished = [key for key, job in self.jobs.items() if job.future.done()]
                self.drain_outbox(now)      # after the check: all a finished job emitted is in
                for key in finished:
                    self.finish(key)
                for _, message, _ in drain(self.socket, ready, False, worker.dims, worker.max_message_bytes,
                                           worker.reject_log):
                    if message is not None:
                        self.last_heard = now
                        outcome = self.handle(message, now)
                        if outcome:
                            return outcome
                for _, message, _ in drain(self.relay, ready, True, worker.dims, worker.max_message_bytes,
                                           worker.reject_log):
                    if message is not None:
                        self.handle_relayed(message)
                if now - self.last_heard > worker.liveness_s:
                    return "welcomed" if self.welcomed else "lost"
                if self.token is not None and now - self.last_sent >= worker.heartbeat_s:
                    self.transmit(Message("heartbeat", {"token": self.token}))
            if self.token is not None:
                self.transmit(Message("bye", {"token": self.token}))
            return "stop"
        finally:
            for job in self.jobs.values():
                job.abandon()       # nothing waits for pieces this connection will never bring
            for params in self.params.values():
                params.abort()
            worker.outbox.clear()
            self.handshakes.close()
            for peer in self.peers.values():
                peer.close(linger=0)
            if self.relay:
                self.relay.close(linger=0)
            self.socket.close(linger=200 if worker.stopping else 0)

    def register(self) -> None:
        self.token = None
        self.transmit(Message("register", {"name": self.worker.name, "relay": self.relay_endpoint}))

    def transmit(self, message: Message, track: bool = False) -> zmq.MessageTracker | None:
        tracker = send(self.socket, message, track=track)
        self.last_sent = time.monotonic()
        return tracker

    # from the coordinator -------------------------------------------------------------------
    def handle(self, message: Message, now: float) -> str | None:
        worker, cmd = self.worker, message.cmd
        if cmd == "welcome":
            try:
                worker.prepare(message["config"], message["vocab"])
            except (ValueError, TypeError) as error:
                worker.log(f"error: worker {worker.name}: the coordinator at {worker.endpoint} sent a "
                           f"run this worker cannot compute ({error}); run the same version on both")
                return "refused"
            if message["pieces"] != worker.dims["pieces"]:
                worker.log(f"error: worker {worker.name}: the coordinator cuts the parameters into pieces of "
                           f"{message['pieces']}, this worker into {worker.dims['pieces']}; run the same "
                           f"version on both")
                return "refused"
            self.token, self.welcomed = message["token"], True
            worker.heartbeat_s, worker.liveness_s = message["heartbeat_s"], message["liveness_s"]
            relay = f"; relaying on {self.relay_endpoint}" if self.relay_endpoint else ""
            worker.log(f"worker {worker.name}: registered with {worker.endpoint}{relay}")
            self.prune()
        elif cmd == "work" and self.token is not None and message["token"] == self.token:
            self.take_work(message, now)
        elif cmd == "params" and self.token is not None:
            self.take_params(message)
        elif cmd == "direct" and self.token is not None:
            chain = self.chains.get((self.token, message["step"], tuple(message["chunks"])))
            if chain is not None:
                self.send_all(chain, chain.go_direct())
        elif cmd == "reject":
            refused = message["refers_to"]
            worker.reject_log(f"worker {worker.name}: coordinator refused {refused['cmd'] or 'a message'}"
                              f" for step {refused['step']}: {message['reason']}")
            # once per token: a reject naming an older token is history
            if message["reregister"] and self.token is not None and refused["token"] == self.token:
                self.register()
        elif cmd == "stop":
            worker.log(f"worker {worker.name}: told to stop ({message['reason']}) after "
                       f"{worker.steps_done} pushes; peak RSS {peak_rss_mb():.0f} MB")
            return "stop"
        return None

    def take_work(self, work: Message, now: float) -> None:
        self.latest_step = max(self.latest_step, work["step"])
        self.prune()
        key = job_key(work)
        if key in self.jobs:
            return
        incoming = self.params_of(work["step"]).watch()
        grad_out = self.worker.grad_buffers.take((self.worker.layout_total,), self.worker.dtype)
        job = self.jobs[key] = Job(None, incoming, now)
        job.future = self.worker.submit(key, work, incoming, grad_out, job.timings)
        chain = self.chains[key] = ChainSums(work, self.worker.dtype, grad_out)
        for message in self.early_sums.pop(work["step"], []):
            if chain.follows(message["chunks"]):
                self.send_all(chain, chain.sum_before(message["piece"], message.arrays["grad"]))
        if work["params_to"]:
            self.forwarding[work["step"]] = [work["params_to"], 0]
            self.forward(work["step"])
        self.close_idle_peers()

    def take_params(self, message: Message) -> None:
        step = message["step"]
        if not self.latest_step <= step <= self.latest_step + 1:    # a relay may run ahead of the work
            return
        problem = self.params_of(step).put(message["piece"], message.arrays["params"])
        if problem:
            self.worker.reject_log(f"worker {self.worker.name}: dropped parameters for step {step}: {problem}")
        self.forward(step)

    def params_of(self, step: int) -> IncomingParams:
        if step not in self.params:
            for old in sorted(self.params)[:max(0, len(self.params) - STEPS_OF_PARAMS + 1)]:
                self.params.pop(old).abort()
            self.params[step] = self.worker.new_params()
        return self.params[step]

    def prune(self) -> None:
        """Forgets what an older step or registration left: jobs, parameters, chains."""
        stale = lambda key: key[0] != self.token or key[1] < self.latest_step
        for key, job in self.jobs.items():
            if stale(key):
                job.abandon()
        for step in [s for s in self.params if s < self.latest_step]:
            self.params.pop(step).abort()
            self.forwarding.pop(step, None)
        for step in [s for s in self.early_sums if s < self.latest_step]:
            del self.early_sums[step]
        for key in [k for k in self.chains if stale(k) and k not in self.jobs]:
            chain = self.chains.pop(key)
            self.worker.grad_buffers.retire(chain.grad_out, chain.trackers)

    def close_idle_peers(self) -> None:
        """Relay connections no work of this step uses go, with whatever they still queued."""
        wanted = {c.sum_to for c in self.chains.values()} | {target[0] for target in self.forwarding.values()}
        for endpoint in [e for e in self.peers if e not in wanted]:
            self.peers.pop(endpoint).close(linger=0)

    # from the compute thread ----------------------------------------------------------------
    def drain_outbox(self, now: float) -> None:
        outbox = self.worker.outbox
        while outbox:
            key, message = outbox.popleft()
            if message["token"] != self.token or message["step"] < self.latest_step:
                continue                                    # fenced or moot
            chain = self.chains[key]
            if message.cmd == "grad":
                self.send_all(chain, chain.own_piece(message["piece"], message.arrays["grad"]))
            else:
                self.transmit(message)
                self.worker.steps_done += 1
                job = self.jobs[key]
                self.worker.trace_push(message, job.received_at, job.timings.get("waited_s", 0.0), now)

    def finish(self, key: tuple) -> None:
        job = self.jobs.pop(key)
        chain = self.chains.get(key)
        if chain is not None and (not chain.in_chain or key[0] != self.token or key[1] < self.latest_step):
            del self.chains[key]        # else kept for a `direct` until a later step's work
            self.worker.grad_buffers.retire(chain.grad_out, chain.trackers)
        if job.future.cancelled():
            return
        error = job.future.exception()
        if isinstance(error, (ValueError, FloatingPointError)):
            self.worker.reject_log(f"worker {self.worker.name}: could not compute the work: {error}")
        elif error is not None and not isinstance(error, WorkAborted):
            raise error
        if job.incoming.stalled and key[0] == self.token:      # its pieces were lost: start afresh
            self.worker.reject_log(f"worker {self.worker.name}: the parameters of step {key[1]} stopped "
                                   f"coming; registering again")
            self.register()

    # the relay ------------------------------------------------------------------------------
    def handle_relayed(self, message: Message) -> None:
        if self.token is None:          # not (or no longer) registered: nothing to relay for
            return
        if message.cmd == "params":
            self.take_params(message)
        elif message.cmd == "grad" and message["prefix"]:
            step = message["step"]
            chain = next((c for k, c in self.chains.items()
                          if k[0] == self.token and k[1] == step and c.follows(message["chunks"])), None)
            if chain is not None:
                self.send_all(chain, chain.sum_before(message["piece"], message.arrays["grad"]))
            elif self.latest_step <= step <= self.latest_step + 1:     # ahead of its work: kept for it
                early = self.early_sums.setdefault(step, [])
                if len(early) < len(self.worker.dims["pieces"]):
                    early.append(message)
        else:
            self.worker.reject_log(f"worker {self.worker.name}: dropped a relayed {message.cmd!r}")

    def forward(self, step: int) -> None:
        """Passes on the step's pieces that arrived and were not forwarded yet."""
        if step not in self.forwarding or step not in self.params:
            return
        target, params = self.forwarding[step], self.params[step]
        while target[1] < params.arrived:
            piece = target[1]
            self.to_peer(target[0], Message("params", {"step": step, "piece": piece}, {"params": params.raw[piece]}))
            target[1] += 1

    def send_all(self, chain: ChainSums, outgoing: list[tuple[str, Message]]) -> None:
        for destination, message in outgoing:
            tracker = (self.transmit(message, track=True) if destination == COORDINATOR
                       else self.to_peer(destination, message))
            if tracker is not None:
                chain.trackers.append(tracker)

    def to_peer(self, endpoint: str, message: Message) -> zmq.MessageTracker | None:
        if endpoint not in self.peers:
            self.peers[endpoint] = connect_relay(self.worker.context, endpoint)
        try:
            return send(self.peers[endpoint], message, track=True, drop_if_busy=True)
        except zmq.Again:       # not connected or not reading: the coordinator abandons the chain
            self.worker.reject_log(f"worker {self.worker.name}: relay peer {endpoint} does not take "
                                   f"{message.cmd} for step {message['step']}; dropped")
            return None


def trace_line(push: Message, received: float, waited_s: float, computed: float) -> str:
    """scripts/netbench.py's timings of one push: received, the work arrived; waited_s,
    computing waited for parameter pieces; computed, the push was sent."""
    return json.dumps({"step": push["step"], "chunks": push["chunks"], "received": received,
                       "waited_s": waited_s, "computed": computed, "compute_s": push["compute_s"]})

