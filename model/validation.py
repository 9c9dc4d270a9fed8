"""Validation loss over the held-out tail, computed in a background process so the training
loop does not stall: `python -m model.validation MODEL CORPUS VAL_FRACTION` prints one JSON line."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from .checkpoint import load_model, model_arrays, state_meta, write_npz_atomic
from .corpus import read_corpus, split_point
from .inference import Model, evaluate
from .threads import blas_thread_env


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
    def best_path(self) -> str:
        return os.path.join(self.save_dir, "best.npz")

    def start(self, state) -> None:
        if self.process is not None:
            self.log(f"validation of step {self.step} still running; skipping step {state.step}")
            return
        write_npz_atomic(self.snapshot_path, model_arrays(state_meta(state), state.params, "float32"))
        env = blas_thread_env(1)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "model.validation", os.path.abspath(self.snapshot_path),
             os.path.abspath(self.corpus_path), str(self.val_fraction)], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True)
        self.step = state.step

    def poll(self, state, wait: bool = False) -> dict | None:
        """The finished validation's figures ({"step", "val_loss", "val_bits"}), else None.
        Updates best.npz and state.extra_meta["best_val_loss"] when it is the best so far."""
        if self.process is None or (not wait and self.process.poll() is None):
            return None
        out, err = self.process.communicate()
        process, self.process = self.process, None
        if process.returncode != 0:
            self.log(f"warning: validation of step {self.step} failed: {err.strip()[-300:]}")
            return None
        figures = json.loads(out)
        result = {"step": self.step, "val_loss": figures["nats_per_char"], "val_bits": figures["bits_per_char"]}
        best = state.extra_meta.get("best_val_loss", math.inf)
        if result["val_loss"] < best:
            os.replace(self.snapshot_path, self.best_path)
            state.extra_meta.update(best_val_loss=result["val_loss"], best_val_step=self.step)
        self.log(f"validation at step {self.step}: {result['val_loss']:.4f} nats/char "
                 f"({result['val_bits']:.4f} bits); best {state.extra_meta['best_val_loss']:.4f} "
                 f"at step {state.extra_meta['best_val_step']}")
        return result

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def main(argv=None) -> int:
    model_path, corpus_path, fraction = (argv or sys.argv[1:])[:3]
    text = read_corpus(corpus_path)
    held_out = text[split_point(len(text), float(fraction)):]
    print(json.dumps(evaluate(Model(*load_model(model_path)), held_out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
