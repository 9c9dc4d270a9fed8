"""Loading a model for the user-facing scripts: from a file or from a live coordinator."""
import math
import os

import _paths

from coordinator.client import PullError
from model.checkpoint import CheckpointError, load_model
from model.cli import positive_float
from model.inference import Model
from protocol.security import CurveClient, SecurityError

# Errors the scripts report as one line on stderr with exit status 2, without a traceback.
USER_ERRORS = (ValueError, CheckpointError, OSError, PullError, SecurityError, RuntimeError)

SHIPPED = os.path.join(_paths.SAVES, "shakespeare.npz")
LATEST = os.path.join(_paths.SAVES, "checkpoint.npz")


def add_model_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint or model-only .npz (default: your own "
                        "saves/checkpoint.npz when it exists, else the shipped saves/shakespeare.npz)")
    source.add_argument("--coordinator", help="pull the live weights from a running coordinator, e.g. tcp://HOST:5555")
    parser.add_argument("--curve-keys", metavar="DIR", help="with --coordinator: CurveZMQ key folder")
    parser.add_argument("--key-name", default="sampler", help="with --curve-keys: DIR/clients/NAME.key_secret "
                        "(default: %(default)s)")
    parser.add_argument("--pull-timeout", type=positive_float, default=10.0,
                        help="with --coordinator: seconds to wait for the weights (default: %(default)s)")


def check_model_arguments(parser, args) -> None:
    """Flags that only mean something with another one: a usage error, not silently ignored."""
    if args.curve_keys and not args.coordinator:
        parser.error("--curve-keys only applies with --coordinator (a file needs no keys)")


def load_meta_params(args):
    """(meta, flat params, where from) for the model the flags name. Raises CheckpointError /
    PullError / ValueError with a message fit for the user."""
    if args.coordinator:
        from coordinator.client import pull_model
        curve = CurveClient(args.curve_keys, args.key_name) if args.curve_keys else None
        meta, params = pull_model(args.coordinator, args.pull_timeout, curve)
        return meta, params, f"the live weights of the coordinator at {args.coordinator}"
    path = checkpoint_path(args)
    meta, params = load_model(path)
    shipped = " (the shipped model; train your own or pass --checkpoint)" if path == SHIPPED else ""
    return meta, params, f"{path}{shipped}"


def checkpoint_path(args) -> str | None:
    """The file the flags name (None for a live coordinator)."""
    if args.coordinator:
        return None
    return args.checkpoint or (LATEST if os.path.exists(LATEST) else SHIPPED)


def load_from_args(args) -> Model:
    """The model the flags name; model.source says which one it is, for the user."""
    meta, params, source = load_meta_params(args)
    model = Model(meta, params)
    model.source = f"model: {source}, step {meta.get('step', '?')}"
    return model


def finite_positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError
    return value


def read_text_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ValueError(f"text file {path} not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"text file {path} is not UTF-8 ({error})") from None
    except IsADirectoryError:
        raise ValueError(f"text file {path} is a directory") from None
    if not text:
        raise ValueError(f"text file {path} is empty; pass a file with some text")
    return text
