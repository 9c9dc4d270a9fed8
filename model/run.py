"""A training run's bookkeeping: resume or start, stop target, metrics.jsonl, checkpoints.

Shared by the single-process loop and the coordinator so both resume, log and checkpoint alike."""
from __future__ import annotations

import json
import math
import os
import time

from .checkpoint import CheckpointError, load_latest_state, save_checkpoint
from .config import Config
from .corpus import make_corpus, read_corpus
from .recurrent import resolve_form
from .training import TrainState, new_state
from .validation import Validator


DEFAULT_EPOCHS = 50


def target_steps(steps: int | None, epochs: float | None, steps_per_epoch: int) -> int:
    """The step a run trains to: --steps, else --epochs (default DEFAULT_EPOCHS) in steps."""
    if steps is not None:
        return steps
    return round((DEFAULT_EPOCHS if epochs is None else epochs) * steps_per_epoch)


class TrainingRun:
    def __init__(self, config: Config, corpus_path: str, save_dir: str, *, steps=None,
                 epochs=None, fresh=False, checkpoint_every=50, eval_every=None, log=print):
        self.log = log
        self.save_dir = save_dir
        self.checkpoint_every = checkpoint_every
        text = read_corpus(corpus_path)
        self.corpus, config = make_corpus(text, config)
        state = None if fresh else load_latest_state(save_dir, log)
        config = config.replace(recurrent_form=resolve_form(
            config.recurrent_form, state.config.recurrent_form if state else None))
        if state is None:
            state = new_state(config, self.corpus)
        else:
            self._check_resumable(state, config)
            state.config = config
            log(f"resuming from {self.checkpoint_path} at step {state.step} (epoch {state.epoch})")
        self.state: TrainState = state
        self.target_steps = target_steps(steps, epochs, self.corpus.steps_per_epoch)
        if eval_every is None:
            eval_every = self.corpus.steps_per_epoch if self.corpus.val_text.size > 1 else 0
        if eval_every and self.corpus.val_text.size < 2:
            raise ValueError("--eval-every needs held-out text: set --val-fraction > 0")
        self.eval_every = eval_every
        self.validator = Validator(save_dir, corpus_path, config.val_fraction, log)
        self.started = time.monotonic()
        self.elapsed_before = float(state.extra_meta.get("elapsed_s", 0.0))
        log(config.describe())
        log(f"corpus {corpus_path}: {len(self.corpus.vocab)} symbols, {self.corpus.chunks} chunks x "
            f"{self.corpus.chunk_len} chars, {self.corpus.steps_per_epoch} steps per epoch, "
            f"{self.corpus.val_text.size} held-out chars; training to step {self.target_steps}")

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.save_dir, "checkpoint.npz")

    def _check_resumable(self, state: TrainState, config: Config) -> None:
        problems = state.config.architecture_mismatch(config)
        if state.corpus_sha256 != self.corpus.sha256 or state.vocab != self.corpus.vocab:
            problems.append("the corpus differs from the one the checkpoint was trained on")
        if problems:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} does not match this run: " + "; ".join(problems)
                + ". Pass the checkpoint's settings, another --save-dir, or --fresh to start over")

    @property
    def done(self) -> bool:
        return self.state.step >= self.target_steps

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def record_step(self, loss: float, grad_norm: float, step_seconds: float, **extra) -> dict:
        """After state.apply_gradient: appends the metrics line and checkpoints when due."""
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.state.step}; lower --lr or "
                                     f"--clip and resume from the last checkpoint")
        chars = self.state.predictions_per_step
        line = {"step": self.state.step, "epoch": round(self.state.step / self.state.steps_per_epoch, 4),
                "loss": loss, "grad_norm": grad_norm,
                "chars_per_s": chars / step_seconds if step_seconds > 0 else None,
                "elapsed_s": round(self.elapsed(), 3), **extra}
        self._append_metrics(line)
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

    def _collect_validation(self, wait: bool = False) -> None:
        result = self.validator.poll(self.state, wait)
        if result:
            self._append_metrics({**result, "elapsed_s": round(self.elapsed(), 3)})

    def finish(self, completed: bool) -> None:
        """At the end of a run: wait for the last validation (and checkpoint again to keep its
        best-so-far in the meta) when training completed; abandon it when stopped early."""
        if completed and self.eval_every:
            self._collect_validation(wait=True)
            if self.validator.step != self.state.step:
                self.validator.start(self.state)
                self._collect_validation(wait=True)
            self.checkpoint()
        self.validator.close()

    def checkpoint(self) -> None:
        self.state.extra_meta["elapsed_s"] = round(self.elapsed(), 3)
        save_checkpoint(self.checkpoint_path, self.state)
