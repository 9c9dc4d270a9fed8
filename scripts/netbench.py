"""The cluster on an emulated network: the coordinator and each worker in their own network
namespace, every link shaped, the default model trained for a few steps per configuration.

    sudo .venv/bin/python scripts/netbench.py --network none,10gbit,1gbit --workers 1,2,4
    sudo .venv/bin/python scripts/netbench.py --network none --workers 1,2 --slow 100mbit

Reports, per configuration, chars/s (the median step's, and the mean over the timed steps) and the phases of a step along its critical path (the
group whose result came last): parameters out (work sent -> arrived, plus the time computing
waited for parameter pieces still on the way), queued (behind other work on that worker),
compute, gradients in (last piece and push ready -> received), update (the optimizer), idle
(the rest); the bytes per step on the coordinator's link; how many timed steps were relayed;
backup copies; a digest of the final parameters, so that runs that must agree bit for bit can
be seen to; and the scaling model's step (scripts/_netmodel.py). Root is needed (network namespaces); the lab is torn
down on every exit, Ctrl-C included."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import _paths
from _netlab import Lab, LabError, bytes_per_s, check_can_build, check_rate
from _emulation import Emulation, group_sizes, measure_compute_times
from _netmodel import CHECK_S_PER_BYTE, step_s as model_step_s
from model.cli import Parser

DEFAULT_CORPUS = os.path.join(_paths.SAVES, "tinyshakespeare.txt")
PORT = 5555


def run_configuration(rates: list[str], args, model_flags: list[str], keyed: bool = False,
                      emulation: Emulation | None = None) -> dict:
    """One cluster: rates[0] is the coordinator's link, rates[k] worker k's; keyed: with CurveZMQ
    keys (made for the run); emulation: time-dilated (scripts/_emulation.py). Returns the figures,
    in real time."""
    workers = len(rates) - 1
    shaped = [emulation.rate(r) for r in rates] if emulation else rates
    with tempfile.TemporaryDirectory() as save_dir, Lab(shaped) as lab:
        endpoint = f"tcp://{lab.address(0)}:{PORT}"
        keys = os.path.join(save_dir, "keys")
        if keyed:
            from protocol.security import create_keys
            create_keys(keys, ["worker"])
        coordinator_keys = ["--curve-keys", keys] if keyed else []
        worker_keys = ["--curve-keys", keys, "--key-name", "worker"] if keyed else []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(os.path.join(save_dir, "cluster.log"), "wb")
        processes, code = [], None
        try:
            processes.append(subprocess.Popen(
                [*lab.exec_prefix(0), sys.executable, "-m", "coordinator", "--bind", endpoint,
                 "--corpus", args.corpus, "--save-dir", save_dir, "--steps", str(args.warmup + args.steps),
                 "--min-workers", str(workers), "--checkpoint-every", "100000", "--log-every", "0", "--fresh",
                 "--trace", os.path.join(save_dir, "coordinator.trace"), *coordinator_keys, *model_flags,
                 *(emulation.coordinator_flags() if emulation else [])],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=_paths.ROOT))
            before = lab.link_bytes(0)
            for k in range(1, workers + 1):
                processes.append(subprocess.Popen(
                    [*lab.exec_prefix(k), sys.executable, "-m", "worker", "--connect", endpoint,
                     "--name", f"host{k}", "--trace", os.path.join(save_dir, f"worker{k}.trace"), *worker_keys,
                     *(emulation.worker_flags() if emulation else [])],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=_paths.ROOT))
            try:
                code = processes[0].wait(args.timeout)
            except subprocess.TimeoutExpired:
                pass
            after = lab.link_bytes(0)
        finally:
            stop(processes)           # before the lab goes, whatever interrupted us
            log.close()
        if code != 0:
            tail = open(os.path.join(save_dir, "cluster.log"), errors="replace").read()[-1500:]
            raise SystemExit(f"error: the cluster with links {rates} "
                             f"{'timed out' if code is None else f'exited {code}'}:\n{tail}")
        figures = phases(save_dir, args.warmup)
        if emulation:
            figures = emulation.undilated(figures)
        steps = args.warmup + args.steps
        figures["coordinator_link_mb_per_step"] = {"in": (after[0] - before[0]) / steps / 1e6,
                                                   "out": (after[1] - before[1]) / steps / 1e6}
        figures.update(params_digest(save_dir))
        return figures


def stop(processes) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def phases(save_dir: str, warmup: int) -> dict:
    """Medians over the timed steps. All processes share this machine's monotonic clock."""
    metrics = {m["step"]: m for m in read_jsonl(os.path.join(save_dir, "metrics.jsonl")) if "loss" in m}
    results: dict[int, list[dict]] = {}
    for name in os.listdir(save_dir):
        if name.startswith("worker") and name.endswith(".trace"):
            for line in read_jsonl(os.path.join(save_dir, name)):
                results.setdefault(line["step"], []).append(line)
    rows = []
    for step in read_jsonl(os.path.join(save_dir, "coordinator.trace")):
        line = metrics.get(step["step"] + 1)
        arrived = [r for r in results.get(step["step"], []) if r["computed"] <= step["gathered"]]
        if line is None or step["step"] < warmup or not arrived:
            continue
        last = max(arrived, key=lambda r: r["computed"])
        # out: until the work arrived, plus what computing then waited for parameter pieces
        row = {"step_s": line["step_s"], "out_s": last["received"] - step["dispatched"] + last["waited_s"],
               "queued_s": last["computed"] - last["compute_s"] - last["waited_s"] - last["received"],
               "compute_s": last["compute_s"], "in_s": step["gathered"] - last["computed"],
               "update_s": line["update_s"], "chars_per_s": line["chars_per_s"],
               "backups_won": line.get("backups_won", 0), "backups_wasted": line.get("backups_wasted", 0),
               "relayed": line.get("relayed", 0)}
        row["idle_s"] = row["step_s"] - sum(row[k] for k in ("out_s", "queued_s", "compute_s", "in_s", "update_s"))
        rows.append(row)
    if not rows:
        raise SystemExit(f"error: no timed steps in {save_dir}; raise --steps")
    counts = ("backups_won", "backups_wasted", "relayed")
    figures = {key: statistics.median(r[key] for r in rows) for key in rows[0] if key not in counts}
    figures["outside_math_share"] = 1 - figures["compute_s"] / figures["step_s"]
    # a slow step now and then (a slow host's probe, a copy) shows in the mean, not the median
    figures["mean_chars_per_s"] = sum(r["chars_per_s"] * r["step_s"] for r in rows) / sum(r["step_s"] for r in rows)
    figures["backups_won"] = sum(r["backups_won"] for r in rows)
    figures["backups_wasted"] = sum(r["backups_wasted"] for r in rows)
    figures["relayed_steps"] = f"{sum(r['relayed'] for r in rows)}/{len(rows)}"
    return figures


def params_digest(save_dir: str) -> dict:
    """A digest of the final parameters; for the model, layer 0's share of them, the number of
    pieces they travel in, and the bytes of the parameters and of a chain's sum on the wire."""
    from model.checkpoint import load_state
    import numpy as np
    from model.wire import WIRE_TAGS, narrow_sums
    state = load_state(os.path.join(save_dir, "checkpoint.npz"))
    config, layout = state.config, state.layout
    start, stop = layout.layer_spans[0]
    run_bytes = np.dtype(config.dtype).itemsize
    return {"params_digest": hashlib.sha256(state.params.tobytes()).hexdigest()[:12],
            "layer0_share": (stop - start) / layout.total, "pieces": len(layout.pieces),
            "wire_bytes": layout.total * (2 if WIRE_TAGS[config.wire_dtype] else run_bytes),
            "sum_bytes": layout.total * (2 if narrow_sums(config) else run_bytes)}


def predicted(rate: str, workers: int, figures: dict, unshaped: dict | None, dilation: float = 0) -> float | None:
    """The scaling model's step for a shaped configuration, from the compute and update measured
    unshaped with as many workers (the shaped run's own compute includes the transfers' cost).
    The bytes are the parameter vector's on the wire (the link's own count also holds the first
    step's, which goes without a chain); an emulation's checks run at full speed, 1/K of its time."""
    if rate == "none" or unshaped is None:
        return None
    relayed, timed = figures["relayed_steps"].split("/")
    chain = workers > 1 and relayed == timed          # else every copy went through the coordinator
    wire_bytes = figures["wire_bytes"]
    return model_step_s(workers, bytes_per_s(rate), wire_bytes, unshaped["compute_s"], unshaped["update_s"],
                        figures["layer0_share"], wire_bytes / figures["pieces"] if chain else None,
                        CHECK_S_PER_BYTE / (dilation or 1), figures["sum_bytes"] if chain else wire_bytes)


def configurations(args) -> list[tuple[str, list[str], bool]]:
    """(label, per-host link rates, keyed) for every requested combination."""
    rows = []
    securities = args.security.split(",")
    if not set(securities) <= {"none", "curve"}:
        raise LabError(f"--security takes none and/or curve, not {args.security!r}")
    for rate in args.network.split(","):
        for workers in args.workers:
            for security in securities:
                tag = " curve" if security == "curve" else ""
                rows.append((f"{rate} x{workers}{tag}", [check_rate(rate)] * (workers + 1), security == "curve"))
                if args.slow and workers >= 2:
                    rows.append((f"{rate} x{workers}{tag}, host {workers} at {args.slow}",
                                 [rate] * workers + [check_rate(args.slow)], security == "curve"))
    return rows


def interrupted(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="none,10gbit,1gbit",
                        help="link rates to measure, comma-separated tc rates or none (default: %(default)s)")
    parser.add_argument("--workers", default=[1, 2, 4], type=lambda text: [int(n) for n in text.split(",")],
                        help="worker counts, comma-separated (default: 1,2,4)")
    parser.add_argument("--slow", help="also run each N >= 2 with the last worker's link at this rate")
    parser.add_argument("--security", default="none", help="none and/or curve (CurveZMQ keys made for the "
                        "run), comma-separated: each configuration is run with each, in turn (default: none)")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per configuration (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration (default: %(default)s)")
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="(default: %(default)s)")
    parser.add_argument("--dilation", type=float, default=0.0,
                        help="emulate: each worker waits K times its group's compute time (measured here on "
                             "one core first, or --compute-times) instead of computing, each link runs at its "
                             "rate / K, figures are divided by K; so 25 hosts run on this machine (default: 0, "
                             "the real math)")
    parser.add_argument("--compute-times", metavar="CHUNKS:SECONDS,...",
                        help="with --dilation: one group's compute time per group size, instead of measuring")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args, model_flags = parser.parse_known_args(argv)
    try:
        check_can_build()
        rows = configurations(args)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not os.path.exists(args.corpus):
        print(f"error: {args.corpus} not found; run scripts/fetch_data.py or pass --corpus", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):     # also where a shell left SIGINT ignored
        signal.signal(signum, interrupted)
    emulation = None
    if args.dilation > 0:
        chunks = int(model_flags[model_flags.index("--chunks") + 1]) if "--chunks" in model_flags else 25
        times = args.compute_times or measure_compute_times(group_sizes(chunks, args.workers), model_flags)
        emulation = Emulation(args.dilation, times)
        print(f"emulated at dilation {args.dilation:g}: one group's compute (chunks:seconds) {times}", flush=True)
    results = {}
    try:
        for label, rates, keyed in rows:
            figures = results[label] = run_configuration(rates, args, model_flags, keyed, emulation)
            workers = len(rates) - 1
            if len(set(rates)) == 1:        # every link alike: what the scaling model expects
                unshaped = results.get(f"none x{workers}" + (" curve" if keyed else ""))
                figures["model_step_s"] = predicted(rates[0], workers, figures, unshaped, args.dilation)
            if not args.json:
                print_row(label, figures)
    except KeyboardInterrupt:
        print("interrupted; the lab is torn down", file=sys.stderr)
        return 130
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def print_row(label: str, f: dict) -> None:
    ms = lambda key: f"{round(f[key] * 1000):5d}"      # whole ms: a rounding of -0.3 ms reads 0, not -0
    link = f["coordinator_link_mb_per_step"]
    print(f"{label:28s} {f['chars_per_s']:7,.0f} chars/s (mean {f['mean_chars_per_s']:,.0f})  step {ms('step_s')} ms = out {ms('out_s')} + queued "
          f"{ms('queued_s')} + compute {ms('compute_s')} + in {ms('in_s')} + update {ms('update_s')} + idle {ms('idle_s')}  "
          f"outside math {f['outside_math_share'] * 100:4.1f}%  coordinator link {link['out']:.1f} MB out "
          f"{link['in']:.1f} MB in per step  relayed {f['relayed_steps']}  backups won {f['backups_won']} "
          f"wasted {f['backups_wasted']}  "
          f"params {f['params_digest']}"
          + (f"  model step {f['model_step_s'] * 1000:.0f} ms" if f.get("model_step_s") else ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())
