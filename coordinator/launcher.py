"""Local training: a coordinator plus worker processes on one machine, or one in-process loop."""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from model.checkpoint import CheckpointError
from model.cli import config_from_args, training_argv
from model.curves import write_curves
from model.run import TrainingRun
from model.training import ChunkGradients, local_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"^step (\d+)/(\d+) epoch ([\d.]+) loss ([\d.]+) chars/s (\d+) workers (\d+)")


class Progress:
    """One line redrawn in place on a terminal; plain log lines otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.monotonic()
        self.first_step = None

    def step(self, line: str, step: int, total: int, loss: float, chars_per_s: float, extra: str = "") -> None:
        if not self.enabled:
            print(line, flush=True)
            return
        if self.first_step is None:
            self.first_step, self.started = step, time.monotonic()
        done = step - self.first_step
        rate = done / max(time.monotonic() - self.started, 1e-9)
        eta = (total - step) / rate if rate > 0 else 0
        width = 30
        filled = int(width * step / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {step}/{total} loss {loss:.4f} {chars_per_s:,.0f} chars/s "
                         f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))} {extra}  ")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\n")
        print(text, file=sys.stderr if self.enabled else sys.stdout, flush=True)

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def refresh_curves(args, step: int) -> None:
    if args.plot_every and step % args.plot_every == 0:
        write_curves(args.save_dir)


def train_in_process(args) -> int:
    """The single-process reference loop: all chunks as one batch, no sockets."""
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: stop.append(signal.Signals(s).name))
    progress = Progress(not args.no_progress)
    try:
        run = TrainingRun(config_from_args(args), args.corpus, args.save_dir, steps=args.steps,
                          epochs=args.epochs, fresh=args.fresh, checkpoint_every=args.checkpoint_every,
                          eval_every=args.eval_every, log=progress.message)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    gradients = ChunkGradients(run.state.layout, run.state.params.dtype,
                               run.state.config.blocked_recurrence)
    if run.done:
        run.checkpoint()
    while not run.done and not stop:
        started = time.monotonic()
        loss, norm = local_step(run.state, run.corpus, gradients)
        try:
            line = run.record_step(loss, norm, time.monotonic() - started, workers=0)
        except (FloatingPointError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        progress.step(f"step {run.state.step}/{run.target_steps} epoch {line['epoch']:.3f} loss {loss:.4f} "
                      f"chars/s {line['chars_per_s']:.0f} workers 0", run.state.step, run.target_steps,
                      loss, line["chars_per_s"])
        refresh_curves(args, run.state.step)
    if stop:
        run.checkpoint()
    run.finish(completed=not stop)
    if args.plot_every:
        write_curves(args.save_dir)
    progress.close()
    print(f"stopped at step {run.state.step}; checkpoint {run.checkpoint_path}", file=sys.stderr)
    return 0


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
        return subprocess.Popen([sys.executable, *argv], cwd=ROOT, preexec_fn=_die_with_parent,
                                start_new_session=True, **kwargs)

    def _on_signal(self, signum, _frame) -> None:
        self.stop_requested = signal.Signals(signum).name
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.send_signal(signal.SIGTERM)   # it checkpoints and stops the workers

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        with tempfile.TemporaryDirectory(prefix="charlstm-") as scratch:
            endpoint_file = os.path.join(scratch, "endpoint")
            self.coordinator = self._spawn(
                ["-m", "coordinator", "--bind", f"ipc://{scratch}/coordinator", "--endpoint-file", endpoint_file,
                 "--liveness", str(self.args.liveness), "--min-workers", str(self.args.workers),
                 *training_argv(self.args)],
                stdout=subprocess.PIPE, text=True, bufsize=1)
            try:
                endpoint = self._wait_for_endpoint(endpoint_file)
                if endpoint is None:
                    return self._finish()
                for k in range(self.args.workers):
                    threads = str(self.args.blas_threads)
                    self.workers.append(self._spawn(["-m", "worker", "--connect", endpoint,
                                                     "--name", f"local-{k}"],
                                                    env=dict(os.environ, OPENBLAS_NUM_THREADS=threads,
                                                             OMP_NUM_THREADS=threads,
                                                             MKL_NUM_THREADS=threads)))
                threading.Thread(target=self._watch_workers, daemon=True).start()
                for raw in self.coordinator.stdout:
                    line = raw.rstrip("\n")
                    match = STEP_LINE.match(line)
                    if match:
                        step, total, _, loss, rate, alive = match.groups()
                        self.progress.step(line, int(step), int(total), float(loss), float(rate),
                                           f"workers {alive}")
                        refresh_curves(self.args, int(step))
                    else:
                        self.progress.message(line)
                return self._finish()
            finally:
                self._cleanup()

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
