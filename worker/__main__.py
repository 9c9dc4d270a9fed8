"""python -m worker --connect tcp://HOST:5555: computes gradients for the coordinator."""
from model.threads import one_blas_thread

one_blas_thread()   # before numpy loads: one BLAS thread per worker process, workers = cores

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from model.cli import Parser, positive_float  # noqa: E402
from protocol import LIVENESS_S  # noqa: E402
from protocol.security import CurveClient, SecurityError  # noqa: E402
from .emulated import compute_times  # noqa: E402
from .reconnect import Worker  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m worker", description=__doc__)
    parser.add_argument("--connect", default=os.environ.get("CHARLSTM_COORDINATOR", "tcp://127.0.0.1:5555"),
                        help="coordinator endpoint, tcp://HOST:PORT or ipc://PATH (default: "
                             "$CHARLSTM_COORDINATOR or %(default)s)")
    parser.add_argument("--name", help="name shown in the coordinator's log (default: host:pid)")
    parser.add_argument("--liveness", type=positive_float, default=LIVENESS_S,
                        help="seconds without a word from the coordinator before reconnecting, until "
                             "the coordinator's own value arrives (default: %(default)s)")
    parser.add_argument("--backoff-max", type=positive_float, default=5.0,
                        help="longest wait between reconnection attempts, seconds (default: %(default)s)")
    parser.add_argument("--curve-keys", metavar="DIR", help="CurveZMQ key folder (scripts/make_keys.py)")
    parser.add_argument("--key-name", default="worker",
                        help="use DIR/clients/NAME.key_secret (default: %(default)s)")
    parser.add_argument("--no-relay", action="store_true",
                        help="take no part in relay chains (other workers forward parameters to this one "
                             "and add up gradients through it; never with --curve-keys)")
    parser.add_argument("--trace", metavar="FILE", help=argparse.SUPPRESS)   # scripts/netbench.py's timings
    # scripts/netbench.py --dilation: the math replaced by a wait (worker/emulated.py)
    parser.add_argument("--emulate-compute", metavar="CHUNKS:SECONDS,...", help=argparse.SUPPRESS)
    parser.add_argument("--dilation", type=positive_float, default=1.0, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        curve = CurveClient(args.curve_keys, args.key_name) if args.curve_keys else None
    except SecurityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    emulation = (compute_times(args.emulate_compute), args.dilation) if args.emulate_compute else None
    return Worker(args.connect, name=args.name, liveness_s=args.liveness, backoff_max_s=args.backoff_max,
                  curve_client=curve, trace=args.trace, relaying=not args.no_relay, emulation=emulation).run()


if __name__ == "__main__":
    sys.exit(main())
