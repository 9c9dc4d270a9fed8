"""One connection's life for a worker: register, take work, feed it the parameter pieces as
they come (from the coordinator or, in a relay chain, from the worker before), send the
gradient's pieces where its route says (protocol/SPEC.md 4.4-4.5), push, heartbeat.

A message's path: the loop drains a socket, handle() or handle_relayed() decides, the records
(work.py, chain.py) answer what goes where, and send_all() sends it; nothing calls back up."""
from __future__ import annotations

import time

import zmq

from model.arithmetic import arithmetic
from protocol import Message
from protocol.security import HandshakeWatch
from protocol.transport import SendBuffers, connect_dealer, drain, peak_rss_mb, poll, send
from .chain import COORDINATOR, ChainSums
from .compute import WorkAborted
from .relay import Relay
from .thread import ComputeThread
from .work import Holdings, Work, key_of, trace_line


class Session:
    def __init__(self, settings, context: zmq.Context, math, heartbeat_s: float, liveness_s: float, *,
                 log, reject_log, stopping, trace=None):
        """settings: the worker's WorkerSettings; math: its WorkerMath (the computation, kept
        across connections); heartbeat_s, liveness_s: until the coordinator's own arrive."""
        self.settings, self.math, self.name = settings, math, settings.name
        self.heartbeat_s, self.liveness_s = heartbeat_s, liveness_s
        self.log, self.reject_log, self.stopping, self.trace = log, reject_log, stopping, trace
        self.handshakes = HandshakeWatch(curve=settings.curve_client is not None)
        self.socket = connect_dealer(context, settings.endpoint, settings.curve_client, self.handshakes.attach)
        self.relay = Relay(context, settings.endpoint, settings.relaying, settings.max_message_bytes,
                           lambda text: reject_log(f"worker {self.name}: {text}"))
        self.thread = ComputeThread()
        self.grad_buffers = SendBuffers()       # gradients go out zero-copy; reused once sent
        # a step's parameters, filled as they arrive; waiting for them ends after liveness_s
        self.held = Holdings(lambda: self.math.compute.incoming(patience_s=self.liveness_s))
        self.welcomed, self.pushes = False, 0
        self.last_heard = self.last_sent = time.monotonic()

    # the loop -------------------------------------------------------------------------------
    def run(self) -> str:
        """Returns "stop", "lost" (never welcomed), "welcomed" (lost later) or "refused" (the
        coordinator refused this worker's CurveZMQ key, or cuts the parameters differently)."""
        self.register()
        try:
            while not self.stopping():
                sockets = [self.socket, self.thread.wake_read] + ([self.relay.socket] if self.relay.socket else [])
                ready = poll(sockets, self.heartbeat_s / 2)
                now = time.monotonic()
                refusal = self.handshakes.refusal()
                if refusal:
                    self.log(f"error: worker {self.name}: {refusal}")
                    return "refused"
                if self.thread.wake_read in ready:
                    self.thread.woken()
                finished = [key for key, work in self.held.works.items() if work.computing and work.future.done()]
                self.drain_outbox(now)      # after the check: all a finished work emitted is in
                for key in finished:
                    self.finish(key)
                for _, message, _ in drain(self.socket, ready, False, self.math.dims, self.settings.max_message_bytes,
                                           self.reject_log):
                    if message is not None:
                        self.last_heard = now
                        outcome = self.handle(message, now)
                        if outcome:
                            return outcome
                for _, message, _ in drain(self.relay.socket, ready, True, self.math.dims,
                                           self.settings.max_message_bytes, self.reject_log):
                    if message is not None:
                        self.handle_relayed(message)
                if now - self.last_heard > self.liveness_s:
                    return "welcomed" if self.welcomed else "lost"
                if self.held.token is not None and now - self.last_sent >= self.heartbeat_s:
                    self.transmit(Message("heartbeat", {"token": self.held.token}))
            if self.held.token is not None:
                self.transmit(Message("bye", {"token": self.held.token}))
            return "stop"
        finally:
            self.held.clear()       # nothing waits for pieces this connection will never bring
            self.thread.close()
            self.handshakes.close()
            self.relay.close()
            self.socket.close(linger=200 if self.stopping() else 0)

    def register(self) -> None:
        self.held.token = None
        self.transmit(Message("register", {"name": self.name, "relay": self.relay.endpoint,
                                           "arithmetic": arithmetic()}))

    def transmit(self, message: Message, track: bool = False) -> zmq.MessageTracker | None:
        """Never blocks: after a failed handshake libzmq leaves no connection to queue on, and the
        loop must go on to hear why (the handshake watch) or give up (liveness)."""
        self.last_sent = time.monotonic()      # a dropped heartbeat keeps the heartbeats' pace too
        try:
            return send(self.socket, message, track=track, drop_if_busy=True)
        except zmq.Again:
            self.log(f"worker {self.name}: no connection to the coordinator to queue {message.cmd} on; dropped it")
            return None

    # from the coordinator -------------------------------------------------------------------
    def handle(self, message: Message, now: float) -> str | None:
        cmd, token = message.cmd, self.held.token
        if cmd == "welcome":
            return self.welcome(message)
        if cmd == "work" and token is not None and message["token"] == token:
            self.take_work(message, now)
        elif cmd == "params" and token is not None:
            self.take_params(message, relayed=False)
        elif cmd == "direct" and token is not None:
            work = self.held.works.get((token, message["step"], tuple(message["chunks"])))
            if work is not None:
                self.send_all(work.route, work.route.go_direct(len(self.math.dims["pieces"])))
        elif cmd == "reject":
            refused = message["refers_to"]
            self.reject_log(f"worker {self.name}: coordinator refused {refused['cmd'] or 'a message'}"
                            f" for step {refused['step']}: {message['reason']}")
            # once per token: a reject naming an older token is history
            if message["reregister"] and token is not None and refused["token"] == token:
                self.register()
        elif cmd == "stop":
            self.log(f"worker {self.name}: told to stop ({message['reason']}) after {self.pushes} pushes "
                     f"on this connection; peak RSS {peak_rss_mb():.0f} MB")
            return "stop"
        return None

    def welcome(self, message: Message) -> str | None:
        problem = self.math.problem_with(message)
        if problem:                 # said, and the coordinator told at once by `bye` (SPEC.md 4.4)
            self.log(f"error: worker {self.name}: {problem}; run the same version on both")
            self.transmit(Message("bye", {"token": message["token"]}))
            return "refused"
        self.held.token, self.welcomed = message["token"], True
        self.held.start_afresh()        # a new registration (SPEC.md 5.6): the steps may be numbered anew
        self.heartbeat_s, self.liveness_s = message["heartbeat_s"], message["liveness_s"]
        self.relay.size_for(len(message["pieces"]))
        relay = f"; relaying on {self.relay.endpoint}" if self.relay.endpoint else ""
        self.log(f"worker {self.name}: registered with {self.settings.endpoint}{relay}")
        self.prune()
        return None

    def take_work(self, message: Message, now: float) -> None:
        held = self.held
        held.latest_step = max(held.latest_step, message["step"])
        self.prune()
        key = key_of(message)
        if key in held.works:
            return
        inputs = held.inputs(message["step"])
        compute = self.math.compute
        grad_out = self.grad_buffers.take((compute.layout.total,), compute.dtype)
        work = held.works[key] = Work(key, ChainSums(message, compute.dtype, grad_out),
                                      inputs.params.watch(), now)
        work.future = self.thread.submit(key, compute.compute, message, work.watch, grad_out, work.timings)
        for early in held.early_sums.pop(message["step"], []):
            self.take_sum(work, early)
        self.store(message["step"], *held.digests_listed(message["step"], message["params_digests"]))
        if message["params_to"]:
            inputs.forward_to = message["params_to"]
            self.forward(message["step"])
        self.relay.keep_only(held.relay_targets())

    def take_params(self, message: Message, relayed: bool) -> None:
        """A piece from the coordinator is used as it is; a relayed one only once it has the
        digest its work lists (work.py holds it until that work has come)."""
        step, piece, array = message["step"], message["piece"], message.arrays["params"]
        if self.held.expects(step):
            self.store(step, *(self.held.relayed_params(step, piece, array) if relayed
                               else ([(piece, array)], [])))

    def store(self, step: int, pieces: list, problems: list[str]) -> None:
        inputs = self.held.inputs(step)
        for piece, array in pieces:
            problem = inputs.params.put(piece, array)
            problems = problems + ([problem] if problem else [])
        for problem in problems:
            self.reject_log(f"worker {self.name}: dropped parameters for step {step}: {problem}")
        if pieces:
            self.forward(step)

    def prune(self) -> None:
        """Forgets what an older step or registration left (work.py's one rule for stale)."""
        for route in self.held.prune():
            self.grad_buffers.retire(route.grad_out, route.trackers)

    # from the compute thread ----------------------------------------------------------------
    def drain_outbox(self, now: float) -> None:
        for key, message in self.thread.emitted():
            if self.held.stale(message["token"], message["step"]):
                continue                                    # fenced or moot
            work = self.held.works[key]
            if message.cmd == "grad":
                self.send_all(work.route, work.route.own_piece(message["piece"], message.arrays["grad"]))
                continue
            self.transmit(message)
            self.pushes += 1
            if self.trace:
                print(trace_line(message, work.received_at, work.timings.get("waited_s", 0.0), now), file=self.trace,
                      flush=True)

    def finish(self, key: tuple) -> None:
        work, future, done_with = self.held.finished(key)
        if done_with is not None:
            self.grad_buffers.retire(done_with.grad_out, done_with.trackers)
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, (ValueError, FloatingPointError)):
            self.reject_log(f"worker {self.name}: could not compute the work: {error}")
        elif error is not None and not isinstance(error, WorkAborted):
            raise error
        if work.watch.stalled and key[0] == self.held.token:      # its pieces were lost: start afresh
            self.reject_log(f"worker {self.name}: the parameters of step {key[1]} stopped coming; registering again")
            self.register()

    # the relay ------------------------------------------------------------------------------
    def handle_relayed(self, message: Message) -> None:
        held = self.held
        if held.token is None:          # not (or no longer) registered: nothing to relay for
            return
        if message.cmd == "params":
            self.take_params(message, relayed=True)
        elif message.cmd == "grad" and message["prefix"]:
            work, problem = held.relayed_sum(message, len(self.math.dims["pieces"]))
            if work is not None:
                self.take_sum(work, message)
            elif problem:
                self.reject_log(f"worker {self.name}: dropped a relayed sum: {problem}")
        else:
            self.reject_log(f"worker {self.name}: dropped a relayed {message.cmd!r}")

    def take_sum(self, work: Work, message: Message) -> None:
        """A sum relayed to this work: added to its own piece only if its MAC verifies."""
        if not work.route.follows(message["chunks"]):
            return
        if not work.route.authentic(message):
            self.reject_log(f"worker {self.name}: dropped a relayed sum for step {message['step']}, piece "
                            f"{message['piece']}: its MAC does not verify (forged or corrupted)")
            return
        self.send_all(work.route, work.route.sum_before(message["piece"], message.arrays["grad"]))

    def forward(self, step: int) -> None:
        """Passes on the step's pieces that arrived and were not forwarded yet."""
        inputs = self.held.steps.get(step)
        for piece in inputs.to_forward() if inputs else []:
            self.relay.send(inputs.forward_to, Message("params", {"step": step, "piece": piece},
                                                       {"params": inputs.params.raw[piece]}))

    def send_all(self, route: ChainSums, outgoing: list[tuple[str, Message]]) -> None:
        for destination, message in outgoing:
            tracker = (self.transmit(message, track=True) if destination == COORDINATOR
                       else self.relay.send(destination, message))
            if tracker is not None:
                route.trackers.append(tracker)
