"""Local training: a coordinator plus worker processes on one machine, or one in-process loop.

This process owns the terminal: the children's output is relayed through it line by line, and
the progress comes from <save-dir>/metrics.jsonl (structured data), never from their log text."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from model.checkpoint import CheckpointError
from model.cli import config_from_args, explicit_settings, training_argv
from model.curves import write_curves
from model.progress import Progress
from model.run import TrainingRun
from model.step import InProcessSource
from model.threads import blas_thread_env


def refresh_curves(args, step: int) -> None:
    if args.plot_every and step % args.plot_every == 0:
        write_curves(args.save_dir)


def train_in_process(args) -> int:
    """The single-process reference loop: all chunks as one batch, no sockets."""
    progress = Progress(not args.no_progress)

    def on_step(line: dict) -> None:
        progress.update(line)
        refresh_curves(args, line["step"])
        if progress.closed:
            run.stop_signal = "closed output"
    try:
        run = TrainingRun(config_from_args(args), args.corpus, args.save_dir, steps=args.steps,
                          epochs=args.epochs, fresh=args.fresh, checkpoint_every=args.checkpoint_every,
                          eval_every=args.eval_every, log=progress.message, log_every=0, on_step=on_step,
                          explicit=explicit_settings(args))
    except (ValueError, OSError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    code = run.train(InProcessSource(run.state, run.corpus))
    if args.plot_every:
        write_curves(args.save_dir)
    progress.close()
    return code


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if train_local itself is killed, so nothing is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalCluster:
    def __init__(self, args):
        self.args = args
        self.coordinator: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.stop_requested = None
        self.progress = Progress(not args.no_progress)

    def _spawn(self, argv, **kwargs) -> subprocess.Popen:
        """A child whose output (stdout and stderr) this process relays line by line."""
        process = subprocess.Popen([sys.executable, *argv], preexec_fn=_die_with_parent,
                                   start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1, **kwargs)
        threading.Thread(target=self._relay, args=(process,), daemon=True).start()
        return process

    def _relay(self, process: subprocess.Popen) -> None:
        for raw in process.stdout:
            self.progress.message(raw.rstrip("\n"))

    def _on_signal(self, signum, _frame) -> None:
        self.stop_requested = signal.Signals(signum).name
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.send_signal(signum)   # it checkpoints and stops the workers

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        metrics_path = os.path.join(self.args.save_dir, "metrics.jsonl")
        with tempfile.TemporaryDirectory(prefix="charlstm-") as scratch:
            endpoint_file = os.path.join(scratch, "endpoint")
            self.coordinator = self._spawn(
                ["-m", "coordinator", "--bind", f"ipc://{scratch}/coordinator", "--endpoint-file", endpoint_file,
                 "--liveness", str(self.args.liveness), "--min-workers", str(self.args.workers),
                 "--log-every", "0", "--audit-share", repr(self.args.audit_share), *training_argv(self.args)])
            try:
                endpoint = self._wait_for_endpoint(endpoint_file)
                if endpoint is None:
                    return self._finish()
                # read once listening: by then the coordinator has resumed, or archived (--fresh)
                metrics_offset = os.path.getsize(metrics_path) if os.path.exists(metrics_path) else 0
                for k in range(self.args.workers):
                    self.workers.append(self._spawn(["-m", "worker", "--connect", endpoint,
                                                     "--name", f"local-{k}"],
                                                    env=blas_thread_env(self.args.blas_threads)))
                threading.Thread(target=self._watch_workers, daemon=True).start()
                self._follow_metrics(metrics_path, metrics_offset)
                return self._finish()
            finally:
                self._cleanup()

    def _follow_metrics(self, path: str, offset: int) -> None:
        """Shows each step the coordinator appends to metrics.jsonl, until it exits."""
        pending = ""
        while True:
            finished = self.coordinator.poll() is not None
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    handle.seek(offset)
                    pending += handle.read()
                    offset = handle.tell()
            *lines, pending = pending.split("\n")
            for text in lines:
                line = json.loads(text)
                if "loss" in line:
                    self.progress.update(line)
                    refresh_curves(self.args, line["step"])
            if self.progress.closed and not self.stop_requested and not finished:
                self.stop_requested = "closed output"
                self.coordinator.send_signal(signal.SIGTERM)    # it checkpoints and stops the workers
            if finished:
                return
            time.sleep(0.1)

    def _watch_workers(self) -> None:
        """If every worker process has died, nobody will finish the step: stop rather than hang."""
        while self.coordinator.poll() is None:
            if all(w.poll() not in (None, 0) for w in self.workers) and not self.stop_requested:
                self.progress.message("error: every worker process exited (their messages are above); "
                                      "stopping the coordinator, which writes a checkpoint")
                self.stop_requested = "workers died"
                self.coordinator.send_signal(signal.SIGTERM)
                return
            time.sleep(0.5)

    def _wait_for_endpoint(self, path: str, timeout_s: float = 120.0) -> str | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.coordinator.poll() is None and not self.stop_requested:
            if os.path.exists(path):
                with open(path) as handle:
                    return handle.read().strip()
            time.sleep(0.02)
        return None

    def _finish(self) -> int:
        code = self.coordinator.wait()
        if self.args.plot_every:
            write_curves(self.args.save_dir)
        self.progress.close()
        return code

    def _cleanup(self) -> None:
        """Workers get a few seconds to leave on their own, then SIGTERM, then SIGKILL."""
        everyone = [self.coordinator, *self.workers]
        for signum, grace in ((None, 2.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = [p for p in everyone if p and p.poll() is None]
            if not alive:
                return
            for process in alive:
                if signum is not None:
                    process.send_signal(signum)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.05)
