"""python -m coordinator --bind tcp://*:5555 [training flags]: the parameter server."""
from model.threads import one_blas_thread

one_blas_thread()   # before numpy loads: the coordinator must not steal the workers' cores

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from model.checkpoint import CheckpointError  # noqa: E402
from model.cli import (Parser, add_training_arguments, config_from_args, explicit_settings, non_negative_int,
                       positive_float, positive_int, share)  # noqa: E402
from model.run import TrainingRun  # noqa: E402
from protocol import HEARTBEAT_S, LIVENESS_S  # noqa: E402
from protocol.security import CurveServer, SecurityError  # noqa: E402
from protocol.transport import EndpointError, log_line  # noqa: E402
from .audit import AUDIT_SHARE  # noqa: E402
from .service import Coordinator  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m coordinator", description=__doc__)
    net = parser.add_argument_group("network")
    net.add_argument("--bind", default="tcp://127.0.0.1:5555",
                     help="ROUTER endpoint, tcp://HOST:PORT or ipc://PATH; use tcp://*:5555 to accept "
                          "workers from other hosts, port * for any free port (default: %(default)s)")
    net.add_argument("--endpoint-file", help="write the endpoint actually bound to this file once listening")
    net.add_argument("--heartbeat", type=positive_float, default=HEARTBEAT_S,
                     help="heartbeat interval in seconds (default: %(default)s)")
    net.add_argument("--liveness", type=positive_float, default=LIVENESS_S,
                     help="seconds of silence before a worker is declared dead (default: %(default)s)")
    net.add_argument("--min-workers", type=positive_int, default=1,
                     help="wait for this many workers before the first step, so that runs with the "
                          "same worker count partition the chunks alike (default: %(default)s)")
    net.add_argument("--curve-keys", metavar="DIR",
                     help="authenticate and encrypt with CurveZMQ: keys from scripts/make_keys.py; only "
                          "public keys in DIR/authorized/ are admitted")
    net.add_argument("--no-relay", action="store_true",
                     help="form no relay chains: every worker gets the parameters from this process and "
                          "sends its own gradient (with --curve-keys: every byte then stays inside CURVE)")
    net.add_argument("--audit-share", type=share, default=AUDIT_SHARE,
                     help="share of steps audited at random: a group recomputed by a second worker, a relay "
                          "chain's sum checked against its members' gradients (protocol/SPEC.md 5.7); 0 leaves "
                          "only the guard's audits (default: 1/40 = %(default)s)")
    net.add_argument("--max-message-mb", type=positive_float, default=512,
                     help="largest message accepted, in MiB (default: %(default)s)")
    net.add_argument("--log-every", type=non_negative_int, default=1,
                     help="a log line every N steps; 0 = none (metrics.jsonl has every step) "
                          "(default: %(default)s)")
    net.add_argument("--trace", metavar="FILE", help=argparse.SUPPRESS)   # scripts/netbench.py's timings
    net.add_argument("--dilation", type=positive_float, default=1.0, help=argparse.SUPPRESS)   # netbench's emulation
    add_training_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    curve = None
    try:
        run = TrainingRun(config_from_args(args), args.corpus, args.save_dir, steps=args.steps,
                          epochs=args.epochs, fresh=args.fresh, checkpoint_every=args.checkpoint_every,
                          eval_every=args.eval_every, log=log_line, log_every=args.log_every,
                          explicit=explicit_settings(args))
        curve = CurveServer(args.curve_keys) if args.curve_keys else None
        coordinator = Coordinator(run.state, run.corpus, args.bind, curve_server=curve,
                                  heartbeat_s=args.heartbeat, liveness_s=args.liveness,
                                  max_message_bytes=int(args.max_message_mb * 1024 * 1024),
                                  min_workers=args.min_workers, relaying=not args.no_relay, trace=args.trace,
                                  audit_share=args.audit_share, time_scale=args.dilation)
    except (ValueError, CheckpointError, OSError, SecurityError, EndpointError) as error:
        if curve is not None:
            curve.stop()
        log_line(f"error: {error}")
        return 2
    if curve:
        log_line(f"CURVE on: only the public keys in {curve.authorized} may connect; traffic with this "
                 f"coordinator is encrypted")
        if not args.no_relay:
            log_line("relay chains on: what workers relay to each other is checked against digests and keys "
                     "sent over CURVE, but travels unencrypted between them; --no-relay keeps every byte in CURVE")
    elif not coordinator.endpoint.startswith(("tcp://127.", "ipc://", "inproc://", "tcp://[::1]")):
        log_line(f"WARNING: listening on {coordinator.endpoint} without authentication or encryption; "
                 f"anyone who can reach this port can join or read the model. Bind to 127.0.0.1 or "
                 f"a private network.")
    if args.endpoint_file:
        temp = args.endpoint_file + ".tmp"
        with open(temp, "w") as handle:
            handle.write(coordinator.endpoint)
        os.replace(temp, args.endpoint_file)
    return run.train(coordinator)


if __name__ == "__main__":
    sys.exit(main())
