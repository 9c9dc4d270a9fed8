"""A training run, written once: resume or start, the step loop, signals, metrics.jsonl,
checkpoints, validation, finish. Where the gradients of a step come from is a step source
(model/step.py: in process, or the coordinator's socket loop); the two differ only in how the
contributions are gathered."""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import numpy as np

from .average import ParamAverage
from .checkpoint import CheckpointError, load_latest_state, save_checkpoint
from .cli import target_steps
from .config import Config, resumed_config
from .corpus import make_corpus, read_corpus, sha256_text
from .optim import RMSprop
from .recurrent import resolve_form
from .rewind import Rewind, restore, set_aside
from .savedir import SaveDirLock, archive_previous_run, check_paths
from .step import StepSource, apply_step
from .training import TrainState, new_state
from .validation import Validator


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingRun:
    """explicit: the Config fields a flag (or a recipe) gave; a resumed run keeps the
    checkpoint's value of every other one. None: all of them (config is the whole intent)."""

    def __init__(self, config: Config, corpus_path: str, save_dir: str, *, steps=None,
                 epochs=None, fresh=False, checkpoint_every=50, eval_every=None, log=print,
                 log_every: int = 1, on_step=None, explicit=None):
        self.log, self.log_every, self.on_step = log, log_every, on_step
        self.save_dir = save_dir
        if checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be >= 1 (got {checkpoint_every})")
        self.checkpoint_every = checkpoint_every
        check_paths(corpus_path, save_dir)
        text = read_corpus(corpus_path)
        self.lock = SaveDirLock(save_dir, log)      # held until train() ends, or this process does
        try:
            self._open(config, text, corpus_path, fresh, log,
                       {f.name for f in Config.fields()} if explicit is None else set(explicit))
        except BaseException:
            self.lock.release()
            raise
        self.target_steps = target_steps(steps, epochs, self.corpus.steps_per_epoch)
        if eval_every is None:
            eval_every = self.corpus.steps_per_epoch if self.corpus.val_text.size > 1 else 0
        if eval_every and self.corpus.val_text.size < 2:
            self.lock.release()
            raise ValueError("--eval-every needs held-out text: set --val-fraction > 0")
        self.eval_every = eval_every
        config = self.state.config
        self.validator = Validator(save_dir, corpus_path, config.val_fraction, log)
        self.optimizer = RMSprop(self.state.square_avg, config.rho, config.eps, config.clip,
                                 weight_decay=config.weight_decay)
        self.average = ParamAverage(config.ema_decay) if config.ema_decay else None
        self.stop_signal: str | None = None
        self.started = time.monotonic()
        self.elapsed_before = float(self.state.extra_meta.get("elapsed_s", 0.0))
        log(config.describe())
        log(f"corpus {corpus_path}: {len(self.corpus.vocab)} symbols, {self.corpus.chunks} chunks x "
            f"{self.corpus.chunk_len} chars, {self.corpus.steps_per_epoch} steps per epoch, "
            f"{self.corpus.val_text.size} held-out chars; training to step {self.target_steps}")

    def _open(self, config: Config, text: str, corpus_path: str, fresh: bool, log, explicit: set) -> None:
        """The run's state: a new one, or the checkpoint's with the explicit flags applied."""
        if fresh:
            archive_previous_run(self.save_dir, log)
            state, source = None, None
        else:
            state, source = load_latest_state(self.save_dir, log)
        if state is not None:
            config, changes, conflicts = resumed_config(state.config, config, explicit)
            if state.corpus_sha256 != sha256_text(text):
                conflicts.append(f"the corpus {corpus_path} differs from the one the checkpoint was trained on")
            if conflicts:
                raise CheckpointError(
                    f"checkpoint {source} does not match this run: " + "; ".join(conflicts)
                    + ". Pass the checkpoint's settings, another --save-dir, or --fresh to start over "
                      "(the old run is kept under previous-runs/)")
        self.corpus, config = make_corpus(text, config)
        config = config.replace(recurrent_form=resolve_form(
            config.recurrent_form, state.config.recurrent_form if state else None))
        if state is None:
            state = new_state(config, self.corpus)
        else:
            state.config = config
            log(f"resuming from {source} at step {state.step} (epoch {state.epoch})")
            for change in changes:
                log(f"resume: {change}, as a flag asks")
            if config.ema_decay and state.average is None:
                state.average, state.extra_meta["average_from"] = np.zeros_like(state.params), state.step
                log(f"resume: the parameters' moving average starts at step {state.step}")
            elif not config.ema_decay and state.average is not None:
                state.average = None
                state.extra_meta.pop("average_from", None)
                log("resume: --ema-decay 0 drops the checkpoint's moving average of the parameters")
        self.state: TrainState = state

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.save_dir, "checkpoint.npz")

    @property
    def done(self) -> bool:
        return self.state.step >= self.target_steps

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    # the run's lifecycle, once ----------------------------------------------------------------
    def train(self, source: StepSource) -> int:
        """Steps until the target (0) or a stop signal (checkpoint, 0); 1 on an error that ends
        the run (its one-line message is logged)."""
        previous = self._catch_stop_signals()
        try:
            if self.eval_every:
                self.validator.resume(self.state)
            if self.done:
                self.checkpoint()
            while not self.done and not self.stop_signal:
                self.step(source)
            if self.stop_signal:
                self.log(f"{self.stop_signal}: writing checkpoint at step {self.state.step} and stopping")
                self.checkpoint()
            reason = "training finished" if self.done else f"stopped by {self.stop_signal}"
            source.close(reason)
            self.finish(completed=not self.stop_signal)
            self.log(f"{reason} at step {self.state.step}; checkpoint {self.checkpoint_path}")
            return 0
        except (CheckpointError, FloatingPointError, OSError) as error:
            self.log(f"error: {error}")
            source.close(f"coordinator error: {error}")
            return 1
        finally:
            self.validator.close()
            self.optimizer.close()
            self.lock.release()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def step(self, source: StepSource) -> None:
        """One optimizer step: gather every chunk's contribution, apply it, record it."""
        started = time.monotonic()
        gathered = source.gather(self.state, lambda: self.stop_signal is not None)
        if gathered is None:
            return
        if isinstance(gathered, Rewind):
            self.rewind(gathered)
            return
        updating = time.monotonic()
        loss, norm = apply_step(self.state, self.optimizer, gathered, source.params_out(self.state), self.average)
        finished = time.monotonic()
        seconds = finished - started
        self.record_step(loss, norm, seconds, **gathered.figures, update_s=round(finished - updating, 4),
                         step_s=round(seconds, 4))

    def rewind(self, rewind: Rewind) -> None:
        """Back to an earlier state: said in the log and in metrics.jsonl, what the later steps
        left moved aside (model/rewind.py), the state checkpointed at once."""
        self.validator.abandon(self.state)      # a validation of a step being undone
        state, left = self.state, self.state.step
        moved = set_aside(self.save_dir, rewind.state.step, state.extra_meta.get("best_val_step"))
        restore(state, rewind.state)
        self.log(f"rolled back from step {left} to step {state.step}: {rewind.reason}; the steps after "
                 f"{state.step} are computed again" + (f" (their {moved})" if moved else ""))
        self._append_metrics({"step": state.step, "rewind_from": left, "reason": rewind.reason,
                              "elapsed_s": round(self.elapsed(), 3)})
        self.checkpoint()

    def _catch_stop_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda s, _frame: setattr(self, "stop_signal", signal.Signals(s).name))
        return previous

    # bookkeeping ------------------------------------------------------------------------------
    def record_step(self, loss: float, grad_norm: float, step_seconds: float, **extra) -> dict:
        """After a step: the metrics line, the log line, a checkpoint and a validation when due."""
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.state.step}; lower --lr or "
                                     f"--clip and resume from the last checkpoint")
        chars = self.state.predictions_per_step
        line = {"step": self.state.step, "epoch": round(self.state.step / self.state.steps_per_epoch, 4),
                "loss": loss, "grad_norm": grad_norm,
                "chars_per_s": chars / step_seconds if step_seconds > 0 else None,
                "elapsed_s": round(self.elapsed(), 3), "target_step": self.target_steps, **extra}
        self._append_metrics(line)
        if self.log_every and self.state.step % self.log_every == 0:
            self.log(f"step {self.state.step}/{self.target_steps} epoch {line['epoch']:.3f} "
                     f"loss {loss:.4f} chars/s {line['chars_per_s'] or 0:.0f} workers {extra.get('workers', 0)}")
        if self.on_step is not None:
            self.on_step(line)
        if self.done:
            self.checkpoint()
        elif self.state.step % self.checkpoint_every == 0:
            try:
                self.checkpoint()
            except OSError as error:      # a full disk must not kill a run: the next one may fit
                self.log(f"error: could not write {self.checkpoint_path} ({error}); the previous "
                         f"checkpoint is intact, training goes on and retries in "
                         f"{self.checkpoint_every} steps. Free some disk space.")
        self._collect_validation()
        if self.eval_every and (self.done or self.state.step % self.eval_every == 0):
            self.validator.start(self.state)
        return line

    def _append_metrics(self, line: dict) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        with open(os.path.join(self.save_dir, "metrics.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def _collect_validation(self, wait: bool = False) -> dict | None:
        result = self.validator.poll(self.state, wait)
        if result:
            self._append_metrics({**result, "elapsed_s": round(self.elapsed(), 3)})
        return result

    def finish(self, completed: bool) -> None:
        """At the end of a run: wait for the last validation (and checkpoint again to keep its
        best-so-far in the meta) when training completed; when stopped early, keep one that has
        finished and leave one still running to the resumed run (model/validation.py PENDING)."""
        if completed and self.eval_every:
            self._collect_validation(wait=True)
            if self.validator.step != self.state.step:
                self.validator.start(self.state)
                self._collect_validation(wait=True)
            self.checkpoint()
        elif self._collect_validation():
            self.checkpoint()
        self.validator.close()

    def checkpoint(self) -> None:
        self.state.extra_meta["elapsed_s"] = round(self.elapsed(), 3)
        save_checkpoint(self.checkpoint_path, self.state)
