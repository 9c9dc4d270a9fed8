"""Train on this machine: one coordinator and --workers worker processes on a local socket.

Resumes from <save-dir>/checkpoint.npz unless --fresh. Ctrl-C or SIGTERM leaves a checkpoint
and no stray processes. --workers 0 trains in this one process (the reference path).
--recipe FILE takes every flag from a recipe (saves/shakespeare.recipe.json makes the shipped
model) and, once the run has reached its target, exports the best checkpoint where it says."""
import os
import sys

from model.threads import one_blas_thread

one_blas_thread()

import argparse  # noqa: E402

from coordinator.audit import AUDIT_SHARE  # noqa: E402
from coordinator.launcher import LocalCluster, train_in_process  # noqa: E402
from model.checkpoint import CheckpointError, export_model, load_model, read_meta  # noqa: E402
from model.config import Config  # noqa: E402
from model.cli import (Parser, RecipeError, add_training_arguments, load_recipe, non_negative_int, positive_float,
                       share, positive_int)  # noqa: E402
from model.cli import recipe_departures, target_steps  # noqa: E402
from model.savedir import check_paths  # noqa: E402
from protocol import LIVENESS_S  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__)
    parser.add_argument("--recipe", help="JSON recipe whose flags become the defaults (see saves/README.md)")
    parser.add_argument("--workers", type=non_negative_int, default=os.cpu_count() or 1,
                        help="worker processes; 0 trains in this process (default: cores = %(default)s)")
    parser.add_argument("--blas-threads", type=positive_int, default=1,
                        help="BLAS threads per worker process; workers x threads should not exceed the "
                             "cores (default: %(default)s)")
    parser.add_argument("--liveness", type=positive_float, default=LIVENESS_S,
                        help="seconds of silence before a worker is declared dead (default: %(default)s)")
    parser.add_argument("--plot-every", type=non_negative_int, default=100,
                        help="refresh <save-dir>/curves.html every N steps; 0 = never (default: %(default)s)")
    parser.add_argument("--audit-share", type=share, default=AUDIT_SHARE,
                        help="share of steps whose results are checked by recomputation (protocol/SPEC.md "
                             "5.7) (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="print log lines instead of a progress bar")
    add_training_arguments(parser)
    return parser


def export_if_finished(args, recipe_args, out: str) -> int:
    """After a recipe's run: the best validation checkpoint (else the last one) becomes `out`,
    unless the run is not the recipe's (flags over it, or a checkpoint trained otherwise): then
    `out` is left as it is and a line says so."""
    try:
        meta, _ = load_model(os.path.join(args.save_dir, "checkpoint.npz"))
        target = target_steps(args.steps, args.epochs, int(meta["steps_per_epoch"]))
        if meta["step"] < target:
            print(f"stopped at step {meta['step']} of {target}; run the same command again to "
                  f"resume, and {out} is written when the run is complete", file=sys.stderr)
            return 0
        best = os.path.join(args.save_dir, "best.npz")
        source = best if os.path.exists(best) else os.path.join(args.save_dir, "checkpoint.npz")
        departures = recipe_departures(args, recipe_args, meta)
        if departures:
            print(f"not writing {out}: this run is not the recipe's ({'; '.join(departures)}); its model "
                  f"is {source} (scripts/export.py --checkpoint {source} --out FILE writes a model-only file)",
                  file=sys.stderr)
            return 0
        exported = export_model(source, out)
    except (CheckpointError, OSError, KeyError) as error:
        print(f"error: could not export the recipe's model: {error}", file=sys.stderr)
        return 1
    best_loss = meta.get("best_val_loss")
    print(f"wrote {out} from {source} (step {exported['step']}"
          + (f", validation {best_loss:.4f} nats/char" if best_loss is not None else "") + ")",
          file=sys.stderr)
    return 0


def chunks_of_run(args) -> int:
    """How many chunks the run trains: --chunks, else its checkpoint's (when it resumes), else
    the default."""
    if args.chunks is not None:
        return args.chunks
    path = os.path.join(args.save_dir, "checkpoint.npz")
    if not args.fresh and os.path.exists(path):
        try:
            return int(read_meta(path)["chunks"])      # the arrays are the run's to read
        except (CheckpointError, KeyError, TypeError, ValueError):
            pass                # the run itself reports an unreadable checkpoint
    return Config().chunks


def main(argv=None) -> int:
    parser = build_parser()
    recipe = recipe_args = None
    known, _ = parser.parse_known_args(argv)
    if known.recipe:
        try:
            recipe = load_recipe(known.recipe, parser)
        except RecipeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        recipe_args = parser.parse_args(["--recipe", known.recipe])
    args = parser.parse_args(argv)
    try:
        check_paths(args.corpus, args.save_dir)      # before any process starts
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    chunks = chunks_of_run(args)
    if args.workers > chunks:      # a worker computes at least one chunk: the rest would idle
        print(f"--workers {args.workers}: the run has {chunks} chunks, so {chunks} workers start", file=sys.stderr)
        args.workers = chunks
    code = train_in_process(args) if args.workers == 0 else LocalCluster(args).run()
    if code == 0 and recipe and recipe.get("export"):
        code = export_if_finished(args, recipe_args, recipe["export"])
    return code


if __name__ == "__main__":
    sys.exit(main())
