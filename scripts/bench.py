"""Measure training speed: in-process fwd+bwd, end-to-end train_local with 1 and N workers,
overhead outside the workers' math, peak memory, and PyTorch's nn.LSTM when it is installed.

Warm-up steps are excluded; medians over the timed steps are reported."""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import _paths

DEFAULT_CORPUS = os.path.join(_paths.ROOT, "saves", "tinyshakespeare.txt")


def in_process(layers, hidden, chunks, seq_len, vocab, steps, warmup, threads):
    """Median chars/s of ChunkGradients.compute for one batch of all chunks, in a child process
    so the BLAS thread count can be set before numpy loads."""
    code = f"""
import json, time, numpy as np, sys
sys.path.insert(0, {_paths.ROOT!r})
from model.params import ParamLayout, init_params
from model.training import ChunkGradients
layout = ParamLayout.for_model({vocab}, {layers}, {hidden})
params = init_params(layout, {hidden}, 0, np.float32)
gradients = ChunkGradients(layout, np.float32)
rng = np.random.default_rng(0)
x = rng.integers(0, {vocab}, ({chunks}, {seq_len})).astype(np.int32)
state = np.zeros(({layers}, {chunks}, {hidden}), np.float32)
times = []
for k in range({warmup + steps}):
    t = time.perf_counter(); gradients.compute(params, x, x, state, state); times.append(time.perf_counter() - t)
print(json.dumps(sorted(times[{warmup}:])[len(times[{warmup}:]) // 2]))
"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    seconds = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                        text=True, check=True).stdout)
    return chunks * seq_len / seconds


def recurrent_forms(hidden, row_counts):
    """The per-step recurrent product's form each batch size gets on this machine (column-block
    width forward and backward; 0 = one packed product), chosen as training chooses it."""
    code = f"""
import json, sys, numpy as np
sys.path.insert(0, {_paths.ROOT!r})
from model.recurrent import RecurrentProduct
W = np.random.default_rng(0).standard_normal(({hidden}, {4 * hidden})).astype(np.float32)
print(json.dumps({{rows: [RecurrentProduct(W, rows, 100).width, RecurrentProduct(W.T, rows, 100).width]
                  for rows in {sorted(set(row_counts))}}}))
"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout)


def end_to_end(corpus, workers, steps, warmup, model_flags, blas_threads=1):
    """Median chars/s and overhead share of train_local; peak RSS from the processes' own reports."""
    with tempfile.TemporaryDirectory() as save_dir:
        result = subprocess.run(
            [sys.executable, os.path.join(_paths.ROOT, "scripts", "train_local.py"), "--corpus", corpus,
             "--save-dir", save_dir, "--steps", str(warmup + steps), "--workers", str(workers),
             "--checkpoint-every", "100000", "--no-progress", "--blas-threads", str(blas_threads),
             *model_flags],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"train_local failed:\n{result.stderr[-2000:]}")
        with open(os.path.join(save_dir, "metrics.jsonl")) as handle:
            lines = [json.loads(line) for line in handle][warmup:]
    log = result.stdout + result.stderr
    coordinator_rss = [float(v) for v in re.findall(r"checkpoint [^;]+; peak RSS (\d+) MB", log)]
    worker_rss = [float(v) for v in re.findall(r"pushes; peak RSS (\d+) MB", log)]
    step_s = statistics.median(m["step_s"] for m in lines)
    overhead = statistics.median((m["step_s"] - m["compute_s"]) / m["step_s"] for m in lines)
    return {"chars_per_s": statistics.median(m["chars_per_s"] for m in lines), "step_s": step_s,
            "overhead_share": overhead, "overhead_ms": overhead * step_s * 1000,
            "coordinator_rss_mb": max(coordinator_rss, default=None),
            "worker_rss_mb": max(worker_rss, default=None)}


def pytorch(layers, hidden, chunks, seq_len, vocab, steps, warmup, threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    lstm = torch.nn.LSTM(vocab, hidden, layers)
    head = torch.nn.Linear(hidden, vocab)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.RMSprop(params, lr=1e-3, alpha=0.95, eps=1e-8)
    x = torch.nn.functional.one_hot(torch.randint(0, vocab, (seq_len, chunks)), vocab).float()
    y = torch.randint(0, vocab, (seq_len * chunks,))
    state = (torch.zeros(layers, chunks, hidden), torch.zeros(layers, chunks, hidden))
    times = []
    for _ in range(warmup + steps):
        started = time.perf_counter()
        out, _ = lstm(x, state)
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, vocab), y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        times.append(time.perf_counter() - started)
    return chunks * seq_len / statistics.median(times[warmup:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="for the end-to-end runs (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N for the N-worker run")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=25)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--skip-end-to-end", action="store_true", help="only the in-process figures")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    shape = (args.layers, args.hidden, args.chunks, args.seq_len)
    vocab = 65
    if os.path.exists(args.corpus):
        with open(args.corpus, encoding="utf-8") as handle:
            vocab = len(set(handle.read()))
    cores = os.cpu_count() or 1
    rows = {"machine": f"{cores} cores, {os.uname().machine}",
            "config": dict(zip(("layers", "hidden", "chunks", "seq_len"), shape), vocab=vocab, dtype="float32"),
            "in_process_1_thread": in_process(*shape, vocab, args.steps, args.warmup, 1),
            f"in_process_{cores}_threads": in_process(*shape, vocab, args.steps, args.warmup, cores),
            "recurrent_block_widths": recurrent_forms(args.hidden, [args.chunks, -(-args.chunks // args.workers)])}
    if not args.skip_end_to_end:
        if not os.path.exists(args.corpus):
            raise SystemExit(f"error: {args.corpus} not found; run scripts/fetch_data.py or pass --corpus")
        flags = ["--layers", str(args.layers), "--hidden", str(args.hidden), "--chunks", str(args.chunks),
                 "--seq-len", str(args.seq_len), "--fresh"]
        rows["train_local_1_worker"] = end_to_end(args.corpus, 1, args.steps, args.warmup, flags)
        rows[f"train_local_{args.workers}_workers"] = end_to_end(args.corpus, args.workers, args.steps,
                                                                 args.warmup, flags)
        if cores > 1:
            rows[f"train_local_1_worker_{cores}_blas_threads"] = end_to_end(
                args.corpus, 1, args.steps, args.warmup, flags, blas_threads=cores)
    torch_rate = pytorch(*shape, vocab, args.steps, args.warmup, cores)
    if torch_rate is not None:
        rows[f"pytorch_{cores}_threads"] = torch_rate
        for name, value in list(rows.items()):
            if name.startswith("train_local") and isinstance(value, dict):
                value["ratio_to_pytorch"] = value["chars_per_s"] / torch_rate
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"machine: {rows['machine']}; config: {rows['config']}")
    print("recurrent products, forward/backward column-block width by rows (0 = one product): "
          + ", ".join(f"{rows_}: {f}/{b}" for rows_, (f, b) in rows["recurrent_block_widths"].items()))
    for name, value in rows.items():
        if isinstance(value, float):
            print(f"{name:32s} {value:12,.2f}" + (" chars/s" if "ratio" not in name else ""))
        elif isinstance(value, dict) and "chars_per_s" in value:
            print(f"{name:32s} {value['chars_per_s']:12,.0f} chars/s  step {value['step_s'] * 1000:.0f} ms  "
                  f"overhead {value['overhead_share'] * 100:.1f}% ({value['overhead_ms']:.0f} ms)  "
                  f"peak RSS coordinator {value['coordinator_rss_mb']} MB, worker {value['worker_rss_mb']} MB"
                  + (f"  {value['ratio_to_pytorch']:.2f}x PyTorch" if "ratio_to_pytorch" in value else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
