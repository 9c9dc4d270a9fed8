"""Starting real coordinator/worker/train_local processes for tests, always with deadlines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--layers", "2", "--hidden", "16", "--chunks", "6", "--seq-len", "20", "--dtype", "float64",
         "--checkpoint-every", "1"]


def env() -> dict:
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_script(script: str, *args, timeout: float = 120, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *map(str, args)],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def train(corpus: str, save_dir: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_script("train_local.py", "--corpus", corpus, "--save-dir", save_dir, "--no-progress",
                      *SMALL, *args, timeout=timeout)


def params_of(save_dir: str) -> np.ndarray:
    from model.checkpoint import load_state
    return load_state(os.path.join(save_dir, "checkpoint.npz")).params


def spawn(module: str, *args, log_path: str | None = None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_endpoint(path: str, process: subprocess.Popen, timeout: float = 30) -> str:
    def ready():
        if process.poll() is not None:
            raise AssertionError(f"coordinator exited early with {process.returncode}")
        return os.path.exists(path) and open(path).read().strip()
    return wait_for(ready, timeout, "the coordinator's endpoint")


def metrics(save_dir: str) -> list[dict]:
    path = os.path.join(save_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def last_step(save_dir: str) -> int:
    lines = metrics(save_dir)
    return lines[-1]["step"] if lines else 0


def stop_all(*processes, timeout: float = 10) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
