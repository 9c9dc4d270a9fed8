"""Validation loss over the held-out tail, computed in a background process so the training
loop does not stall: `python -m model.validation CORPUS VAL_FRACTION MODEL [MODEL...]` prints
one JSON line, a list with each model's figures."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from .checkpoint import CheckpointError, load_model, model_arrays, read_meta, state_meta, write_npz_atomic
from .corpus import read_corpus, split_point
from .inference import Model, evaluate
from .threads import blas_thread_env


# In a checkpoint's extra meta: the step of a validation started and not yet collected. A stop
# interrupts it; the resumed run validates that step's snapshot again, so no epoch goes unscored.
PENDING = "validating_step"


class Validator:
    """Snapshots the model at a step, evaluates it in a child process, keeps the best as best.npz."""

    def __init__(self, save_dir: str, corpus_path: str, val_fraction: float, log=print):
        self.save_dir, self.corpus_path, self.val_fraction, self.log = save_dir, corpus_path, val_fraction, log
        self.process: subprocess.Popen | None = None
        self.step = None

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.save_dir, "validating.npz")

    @property
    def average_path(self) -> str:
        """The snapshot of the parameters' moving average (Config.ema_decay), scored beside them."""
        return os.path.join(self.save_dir, "validating-average.npz")

    @property
    def best_path(self) -> str:
        return os.path.join(self.save_dir, "best.npz")

    def start(self, state) -> None:
        if self.process is not None:
            self.log(f"validation of step {self.step} still running; skipping step {state.step}")
            return
        meta = state_meta(state)
        write_npz_atomic(self.snapshot_path, model_arrays(meta, state.params, "float32"))
        if state.average is not None:
            write_npz_atomic(self.average_path, model_arrays(dict(meta, averaged=True), state.averaged(), "float32"))
        self._launch(state, state.step)

    def _models(self, state) -> list[str]:
        return [self.snapshot_path] + ([self.average_path] if state.average is not None else [])

    def _launch(self, state, step: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "model.validation", os.path.abspath(self.corpus_path), str(self.val_fraction),
             *map(os.path.abspath, self._models(state))], env=blas_thread_env(1), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.step = state.extra_meta[PENDING] = step

    def resume(self, state) -> None:
        """The validation a stop interrupted runs again from its snapshot (said in one line)."""
        step = state.extra_meta.get(PENDING)
        if step is None or self.process is not None:
            return
        try:
            kept = all(read_meta(path)["step"] == step for path in self._models(state))
        except (CheckpointError, KeyError):
            kept = False
        if kept:
            self.log(f"resume: validating step {step} again (a stop interrupted it)")
            self._launch(state, step)
        else:
            state.extra_meta.pop(PENDING)
            self.log(f"warning: the validation of step {step} was interrupted and its snapshot "
                     f"{self.snapshot_path} is gone or holds another step: step {step} has no validation loss")

    def poll(self, state, wait: bool = False) -> dict | None:
        """The finished validation's figures ({"step", "val_loss", "val_bits"}), else None.
        Updates best.npz and state.extra_meta["best_val_loss"] when it is the best so far."""
        if self.process is None or (not wait and self.process.poll() is None):
            return None
        out, err = self.process.communicate()
        process, self.process = self.process, None
        state.extra_meta.pop(PENDING, None)
        if process.returncode != 0:
            self.log(f"warning: validation of step {self.step} failed: {err.strip()[-300:]}")
            return None
        figures = json.loads(out)          # one per model: the parameters, then their average
        result = {"step": self.step, "val_loss": figures[0]["nats_per_char"], "val_bits": figures[0]["bits_per_char"]}
        if len(figures) > 1:
            result.update(average_val_loss=figures[1]["nats_per_char"], average_val_bits=figures[1]["bits_per_char"])
        scored = [(figures[0]["nats_per_char"], self.snapshot_path, "parameters")] + (
            [(figures[1]["nats_per_char"], self.average_path, "average")] if len(figures) > 1 else [])
        loss, path, which = min(scored)
        if loss < state.extra_meta.get("best_val_loss", math.inf):
            os.replace(path, self.best_path)
            state.extra_meta.update(best_val_loss=loss, best_val_step=self.step, best_val_of=which)
        average = f", average {result['average_val_loss']:.4f}" if len(figures) > 1 else ""
        self.log(f"validation at step {self.step}: {result['val_loss']:.4f} nats/char "
                 f"({result['val_bits']:.4f} bits){average}; best {state.extra_meta['best_val_loss']:.4f} "
                 f"at step {state.extra_meta['best_val_step']}")
        return result

    def _stop(self) -> bool:
        """Kills a validation still running; whether there was one."""
        running = self.process is not None and self.process.poll() is None
        if running:
            self.process.kill()
            self.process.wait()
        self.process = None
        return running

    def close(self) -> None:
        """Stops a validation still running: a checkpoint written before keeps it PENDING."""
        if self._stop():
            self.log(f"validation of step {self.step} interrupted; the run validates it when it resumes")

    def abandon(self, state) -> None:
        """A validation of a step being undone (a rollback): stopped and forgotten."""
        self._stop()
        state.extra_meta.pop(PENDING, None)


def main(argv=None) -> int:
    corpus_path, fraction, *model_paths = argv or sys.argv[1:]
    text = read_corpus(corpus_path)
    held_out = text[split_point(len(text), float(fraction)):]
    print(json.dumps([evaluate(Model(*load_model(path)), held_out) for path in model_paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
