"""netbench.py --dilation K: many hosts on one machine by stretching time. Every worker runs the
real protocol but waits instead of computing (worker/emulated.py), K times as long as the real
computation of its group measured here on one core; every link runs at its rate / K; so the
cluster's figures, divided by K, stand for the real ones while the protocol's own CPU shrinks K
times beside them. Not modelled: that CPU at full speed (digests, MACs, copies, msgpack), each
host's own memory bandwidth and cores, and the coordinator's update (real time, so K times too
short in emulated time: 1-2 ms of 10-20)."""
from __future__ import annotations

from dataclasses import dataclass
import json
import math
import os
import subprocess
import sys

import _paths
from _netlab import bytes_per_s

TIME_KEYS = ("step_s", "out_s", "queued_s", "compute_s", "in_s", "update_s", "idle_s")
RATE_KEYS = ("chars_per_s", "mean_chars_per_s")


def group_sizes(chunks: int, workers: list[int]) -> list[int]:
    """The sizes of the groups `chunks` split into over each worker count (coordinator/step.py)."""
    return sorted({size for n in workers for size in (chunks // min(n, chunks), math.ceil(chunks / min(n, chunks)))})


def measure_compute_times(sizes: list[int], model_flags: list[str]) -> str:
    """Seconds per step of one group of each size, fwd + bwd in one process on one core
    (scripts/bench.py), as worker --emulate-compute takes them: "1:0.106,4:0.231,..."."""
    pairs = []
    for size in sizes:
        out = subprocess.run([sys.executable, os.path.join(_paths.ROOT, "scripts", "bench.py"), "--skip-end-to-end",
                              "--chunks", str(size), "--steps", "3", "--warmup", "1", "--json", *model_flags],
                             capture_output=True, text=True, check=True, cwd=_paths.ROOT,
                             env=dict(os.environ, OPENBLAS_NUM_THREADS="1")).stdout
        figures = json.loads(out)
        seconds = size * figures["config"]["seq_len"] / figures["in_process_1_thread"]
        pairs.append(f"{size}:{seconds:.4f}")
    return ",".join(pairs)


@dataclass(frozen=True)
class Emulation:
    dilation: float
    compute_times: str

    def rate(self, rate: str) -> str:
        """A link's rate stretched: 1gbit at dilation 10 -> 100000kbit; none stays none."""
        return rate if rate == "none" else f"{int(bytes_per_s(rate) * 8 / 1000 / self.dilation)}kbit"

    def worker_flags(self) -> list[str]:
        return ["--emulate-compute", self.compute_times, "--dilation", f"{self.dilation:g}",
                "--liveness", f"{10 * self.dilation:g}"]

    def coordinator_flags(self) -> list[str]:
        # the referee would check waits against real math: no audits in an emulation
        return ["--dilation", f"{self.dilation:g}", "--audit-share", "0", "--liveness", f"{10 * self.dilation:g}",
                "--heartbeat", f"{self.dilation:g}"]

    def undilated(self, figures: dict) -> dict:
        """Emulated figures back in real time."""
        out = dict(figures)
        for key in TIME_KEYS:
            out[key] = figures[key] / self.dilation
        for key in RATE_KEYS:
            out[key] = figures[key] * self.dilation
        return out
