"""Loading a model for the user-facing scripts: from a file or from a live coordinator."""
import os

import _paths

from coordinator.client import PullError
from model.checkpoint import CheckpointError, load_model
from model.inference import Model
from protocol.security import CurveClient, SecurityError

# Errors the scripts report as one line on stderr with exit status 2, without a traceback.
USER_ERRORS = (ValueError, CheckpointError, OSError, PullError, SecurityError, RuntimeError)

SHIPPED = os.path.join(_paths.SAVES, "shakespeare.npz")
LATEST = os.path.join(_paths.SAVES, "checkpoint.npz")


def add_model_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint or model-only .npz (default: the shipped "
                        "saves/shakespeare.npz, else saves/checkpoint.npz)")
    source.add_argument("--coordinator", help="pull the live weights from a running coordinator, e.g. tcp://HOST:5555")
    parser.add_argument("--curve-keys", metavar="DIR", help="with --coordinator: CurveZMQ key folder")
    parser.add_argument("--key-name", default="sampler", help="with --curve-keys: DIR/clients/NAME.key_secret "
                        "(default: %(default)s)")
    parser.add_argument("--pull-timeout", type=float, default=10.0,
                        help="with --coordinator: seconds to wait for the weights (default: %(default)s)")


def load_from_args(args) -> Model:
    """Raises CheckpointError / PullError / FileNotFoundError with a message fit for the user."""
    if args.coordinator:
        from coordinator.client import pull_model
        curve = CurveClient(args.curve_keys, args.key_name) if args.curve_keys else None
        return Model(*pull_model(args.coordinator, args.pull_timeout, curve))
    path = args.checkpoint or (SHIPPED if os.path.exists(SHIPPED) else LATEST)
    return Model(*load_model(path))


def read_text_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ValueError(f"text file {path} not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"text file {path} is not UTF-8 ({error})") from None
