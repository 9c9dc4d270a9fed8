"""Train on this machine: one coordinator and --workers worker processes on a free loopback port.

Resumes from <save-dir>/checkpoint.npz unless --fresh. Ctrl-C or SIGTERM leaves a checkpoint
and no stray processes. --workers 0 trains in this one process (the reference path)."""
import os
import sys

import _paths  # noqa: F401

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402

from coordinator.launcher import LocalCluster, train_in_process  # noqa: E402
from model.cli import add_training_arguments  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes; 0 trains in this process (default: cores = %(default)s)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads per worker process; workers x threads should not exceed the "
                             "cores (default: %(default)s)")
    parser.add_argument("--liveness", type=float, default=10.0,
                        help="seconds of silence before a worker is declared dead (default: %(default)s)")
    parser.add_argument("--plot-every", type=int, default=100,
                        help="refresh <save-dir>/curves.html every N steps; 0 = never (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="print log lines instead of a progress bar")
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.workers == 0:
        return train_in_process(args)
    return LocalCluster(args).run()


if __name__ == "__main__":
    sys.exit(main())
