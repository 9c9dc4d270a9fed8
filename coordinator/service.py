"""The coordinator's socket loop: a thin shell that feeds ParameterServer and sends its answers."""
from __future__ import annotations

import signal
import time

import zmq

from model.checkpoint import CheckpointError
from model.run import TrainingRun
from protocol import Message
from protocol.transport import RateLimitedLog, bind_router, log_line, peak_rss_mb, poll, receive, send
from .server import Contribution, ParameterServer


class Coordinator:
    def __init__(self, run: TrainingRun, bind: str, *, heartbeat_s: float = 1.0,
                 liveness_s: float = 10.0, max_message_bytes: int = 512 * 1024 * 1024,
                 min_workers: int = 1, curve_server=None, log=log_line):
        self.run = run
        self.server = ParameterServer(run.state, run.corpus, liveness_s)
        self.heartbeat_s, self.liveness_s = heartbeat_s, liveness_s
        self.max_message_bytes = max_message_bytes
        self.log = log
        self.reject_log = RateLimitedLog(log)
        # two I/O threads: the parameters go to two workers at once instead of one after the other
        self.context = zmq.Context(io_threads=2)
        self.curve_server = curve_server
        self.socket, self.endpoint = bind_router(self.context, bind, max_message_bytes, curve_server)
        config = run.state.config
        self.dims = {"P": run.state.params.size, "S": config.layers, "W": config.hidden,
                     "T": config.seq_len, "float": run.state.params.dtype.str}
        self.stopping = None
        self.min_workers = min_workers      # before the first step, so the partition is reproducible
        self.step_started = 0.0
        self.waiting_logged = 0.0

    def request_stop(self, signum, _frame) -> None:
        self.stopping = signal.Signals(signum).name

    # sending --------------------------------------------------------------------------------
    def _send(self, token_or_identity, message: Message) -> None:
        worker = self.server.workers.get(token_or_identity) if isinstance(token_or_identity, int) else None
        identity = worker.identity if worker else token_or_identity
        send(self.socket, message, identity)
        if worker:
            worker.last_sent = time.monotonic()

    def _dispatch(self, items) -> None:
        for item in items:
            self._send(item.token, Message("work", {"token": item.token, "step": item.step,
                                                    "chunks": list(item.chunks)},
                                           self.server.work_arrays(item)))

    def _welcome(self, identity: bytes, name: str) -> None:
        token = self.server.register(identity, name, time.monotonic())
        state = self.run.state
        self._send(token, Message("welcome", {
            "token": token, "config": state.config.to_dict(), "vocab": state.vocab,
            "heartbeat_s": self.heartbeat_s, "liveness_s": self.liveness_s}))
        self.log(f"worker {name!r} registered (token {token}); {len(self.server.workers)} alive")
        self._dispatch(self.server.orphaned_work())

    def _model_message(self) -> Message:
        state = self.run.state
        layout = state.layout
        return Message("model", {"step": state.step, "config": state.config.to_dict(), "vocab": state.vocab,
                                 "names": list(layout.names), "shapes": [list(s) for s in layout.shapes]},
                       {"params": state.params})

    # receiving ------------------------------------------------------------------------------
    def _handle(self, identity: bytes, message: Message) -> None:
        now = time.monotonic()
        cmd = message.cmd
        if cmd == "register":
            self._welcome(identity, message["name"])
        elif cmd == "pull":
            send(self.socket, self._model_message(), identity)
        elif cmd in ("heartbeat", "push", "bye"):
            token = message["token"]
            worker = self.server.workers.get(token)
            if worker is None or worker.identity != identity:
                self.reject_log(f"refused {cmd} with unknown or stale token {token}")
                send(self.socket, Message("reject", {"reason": "unknown or expired token; register again",
                                                     "reregister": True}), identity)
                return
            self.server.heard_from(token, now)
            if cmd == "push":
                self._handle_push(token, message)
            elif cmd == "bye":
                self.log(f"worker {worker.name!r} left")
                self._dispatch(self.server.drop(token))
        else:
            self.reject_log(f"dropped {cmd!r}: not a command the coordinator accepts")

    def _handle_push(self, token: int, message: Message) -> None:
        chunks = tuple(message["chunks"])
        contribution = Contribution(message["loss"], message.arrays["grad"], message.arrays["h"],
                                    message.arrays["c"], message["compute_s"])
        status, reason = self.server.accept_push(token, message["step"], chunks, contribution)
        if status:
            self._send(token, Message("ack", {"step": message["step"], "chunks": list(chunks),
                                              "status": status}))
        else:
            self.reject_log(f"refused push from token {token}: {reason}")
            self._send(token, Message("reject", {"reason": reason, "reregister": False}))

    # housekeeping ---------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        dead, work = self.server.reap(now)
        for token in dead:
            self.log(f"worker token {token} silent for over {self.liveness_s:g}s: declared dead, "
                     f"its chunks go to live workers")
        self._dispatch(work)
        for worker in list(self.server.workers.values()):
            if now - worker.last_sent >= self.heartbeat_s:
                self._send(worker.token, Message("heartbeat", {"token": worker.token}))
        if not self.server.workers and now - self.waiting_logged > 30:
            self.log(f"waiting for workers on {self.endpoint} (start one with "
                     f"`python -m worker --connect {self.endpoint}`)")
            self.waiting_logged = now

    def _finish_step(self) -> None:
        figures = self.server.finish_step()
        seconds = time.monotonic() - self.step_started
        state = self.run.state
        line = self.run.record_step(figures["loss"], figures["grad_norm"], seconds,
                                    workers=len(self.server.workers), compute_s=round(figures["compute_s"], 4),
                                    step_s=round(seconds, 4))
        print(f"step {state.step}/{self.run.target_steps} epoch {line['epoch']:.3f} "
              f"loss {figures['loss']:.4f} chars/s {line['chars_per_s']:.0f} "
              f"workers {len(self.server.workers)}", flush=True)

    def serve(self) -> int:
        """Runs until the target step (returns 0) or a stop signal (checkpoint, returns 0)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        self.log(f"coordinator listening on {self.endpoint}")
        if self.run.done:
            self.run.checkpoint()
        try:
            while not self.run.done and not self.stopping:
                if self.server.in_flight is None and len(self.server.workers) >= self.min_workers:
                    self.min_workers = 1
                    self.step_started = time.monotonic()
                    self._dispatch(self.server.start_step())
                if poll([self.socket], self.heartbeat_s / 4):
                    while self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        identity, message = receive(self.socket, True, self.dims,
                                                    self.max_message_bytes, self.reject_log)
                        if message is not None:
                            self._handle(identity, message)
                        if self.server.in_flight and self.server.in_flight.complete:
                            self._finish_step()
                            break
                self._housekeeping()
            if self.stopping:
                self.log(f"{self.stopping}: writing checkpoint at step {self.run.state.step} and stopping")
                self.run.checkpoint()
            reason = "training finished" if self.run.done else f"coordinator stopped ({self.stopping})"
            for worker in list(self.server.workers.values()):
                self._send(worker.token, Message("stop", {"reason": reason}))
            self.run.finish(completed=not self.stopping)     # may wait for the last validation
            self.log(f"{reason} at step {self.run.state.step}; checkpoint {self.run.checkpoint_path}; "
                     f"peak RSS {peak_rss_mb():.0f} MB")
            return 0
        except (CheckpointError, FloatingPointError, OSError) as error:
            self.log(f"error: {error}")
            return 1
        finally:
            self.reject_log.flush()
            self.log(f"{self.reject_log.total} invalid or refused messages in this run")
            self.socket.close(linger=1000)
            if self.curve_server is not None:
                self.curve_server.stop()
            self.context.term()
