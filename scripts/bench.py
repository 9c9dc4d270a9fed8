"""Measure training speed: in-process fwd+bwd, end-to-end train_local with 1 and N workers,
overhead outside the workers' math, peak memory, and PyTorch's nn.LSTM when it is installed.

Warm-up steps are excluded; medians over the timed steps are reported."""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import _paths
from model.cli import Parser
from model.threads import blas_thread_env

DEFAULT_CORPUS = os.path.join(_paths.SAVES, "tinyshakespeare.txt")


def child(argv: list[str], threads: int) -> dict:
    """Runs this script in a child process (so the BLAS thread count is set before numpy loads)
    and returns the JSON object it prints."""
    result = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], env=blas_thread_env(threads),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench child {argv} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def measure_in_process(layers, hidden, chunks, seq_len, vocab, steps, warmup, form) -> dict:
    """(in the child) Median seconds of one batch of every chunk through ChunkGradients."""
    import numpy as np
    from model.config import Config
    from model.masks import MaskSettings
    from model.params import ParamLayout, init_params
    from model.training import ChunkGradients
    config = Config(layers=layers, hidden=hidden, chunks=chunks, seq_len=seq_len, recurrent_form=form)
    layout = ParamLayout.for_model(vocab, layers, hidden)
    params = init_params(layout, hidden, 0, np.float32)
    gradients = ChunkGradients(config, layout)
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (chunks, seq_len)).astype(np.int32)
    state = np.zeros((layers, chunks, hidden), np.float32)
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        gradients.compute(params, step, range(chunks), x, x, state, state, mask_settings=MaskSettings.of(config))
        times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times[warmup:])}


def in_process(layers, hidden, chunks, seq_len, vocab, steps, warmup, threads, form):
    """Median chars/s of ChunkGradients.compute for one batch of all chunks."""
    seconds = child(["--child-in-process", json.dumps([layers, hidden, chunks, seq_len, vocab, steps,
                                                       warmup, form])], threads)["seconds"]
    return chunks * seq_len / seconds


def measure_end_to_end(corpus, workers, steps, warmup, model_flags, blas_threads) -> dict:
    """(in the child) Median chars/s and overhead share of train_local, from its metrics.jsonl,
    and the peak RSS of the largest process of its tree (this child waited for nothing else)."""
    with tempfile.TemporaryDirectory() as save_dir:
        result = subprocess.run(
            [sys.executable, os.path.join(_paths.ROOT, "scripts", "train_local.py"), "--corpus", corpus,
             "--save-dir", save_dir, "--steps", str(warmup + steps), "--workers", str(workers),
             "--checkpoint-every", "100000", "--no-progress", "--plot-every", "0",
             "--blas-threads", str(blas_threads), *model_flags],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"train_local failed:\n{result.stderr[-2000:]}")
        with open(os.path.join(save_dir, "metrics.jsonl")) as handle:
            lines = [json.loads(line) for line in handle if "loss" in line][warmup:]
    step_s = statistics.median(m["step_s"] for m in lines)
    overhead = statistics.median((m["step_s"] - m.get("compute_s", m["step_s"])) / m["step_s"] for m in lines)
    return {"chars_per_s": statistics.median(m["chars_per_s"] for m in lines), "step_s": step_s,
            "overhead_share": overhead, "overhead_ms": overhead * step_s * 1000,
            "largest_process_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def end_to_end(corpus, workers, steps, warmup, model_flags, blas_threads=1):
    return child(["--child-end-to-end", json.dumps([corpus, workers, steps, warmup, model_flags,
                                                    blas_threads])], 1)


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
    parser = Parser(description=__doc__)
    parser.add_argument("--child-in-process", help=argparse.SUPPRESS)
    parser.add_argument("--child-end-to-end", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="for the end-to-end runs (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N for the N-worker run")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=2, help="LSTM layers (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=512, help="units per layer (default: %(default)s)")
    parser.add_argument("--chunks", type=int, default=25, help="chunks per step (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=100, help="TBPTT window (default: %(default)s)")
    parser.add_argument("--recurrent-form", choices=("auto", "blocks", "single"), default="auto",
                        help="the recurrent product's form for every measurement (default: %(default)s, "
                             "this CPU's rule)")
    parser.add_argument("--skip-end-to-end", action="store_true", help="only the in-process figures")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.child_in_process:
        print(json.dumps(measure_in_process(*json.loads(args.child_in_process))))
        return 0
    if args.child_end_to_end:
        print(json.dumps(measure_end_to_end(*json.loads(args.child_end_to_end))))
        return 0
    from model.recurrent import resolve_form
    form = resolve_form(args.recurrent_form)
    shape = (args.layers, args.hidden, args.chunks, args.seq_len)
    vocab = 65
    if os.path.exists(args.corpus):
        with open(args.corpus, encoding="utf-8") as handle:
            vocab = len(set(handle.read()))
    cores = os.cpu_count() or 1
    rows = {"machine": f"{cores} cores, {os.uname().machine}",
            "config": dict(zip(("layers", "hidden", "chunks", "seq_len"), shape), vocab=vocab, dtype="float32"),
            "recurrent_form": form,
            "in_process_1_thread": in_process(*shape, vocab, args.steps, args.warmup, 1, form),
            f"in_process_{cores}_threads": in_process(*shape, vocab, args.steps, args.warmup, cores, form)}
    if not args.skip_end_to_end:
        if not os.path.exists(args.corpus):
            raise SystemExit(f"error: {args.corpus} not found; run scripts/fetch_data.py or pass --corpus")
        flags = ["--layers", str(args.layers), "--hidden", str(args.hidden), "--chunks", str(args.chunks),
                 "--seq-len", str(args.seq_len), "--recurrent-form", form, "--fresh"]
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
    print(f"recurrent products: {form} (--recurrent-form auto on this CPU: {resolve_form('auto')})")
    for name, value in rows.items():
        if isinstance(value, float):
            print(f"{name:32s} {value:12,.2f}" + (" chars/s" if "ratio" not in name else ""))
        elif isinstance(value, dict) and "chars_per_s" in value:
            print(f"{name:32s} {value['chars_per_s']:12,.0f} chars/s  step {value['step_s'] * 1000:.0f} ms  "
                  f"overhead {value['overhead_share'] * 100:.1f}% ({value['overhead_ms']:.0f} ms)  "
                  f"peak RSS {value['largest_process_rss_mb']} MB (largest process)"
                  + (f"  {value['ratio_to_pytorch']:.2f}x PyTorch" if "ratio_to_pytorch" in value else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
