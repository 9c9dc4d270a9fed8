"""Loading a model for the user-facing scripts: from a file or from a live coordinator."""
import os

import _paths  # noqa: F401

from model.checkpoint import load_model
from model.inference import Model

SHIPPED = os.path.join(_paths.ROOT, "saves", "shakespeare.npz")
LATEST = os.path.join(_paths.ROOT, "saves", "checkpoint.npz")


def add_model_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint or model-only .npz (default: the shipped "
                        "saves/shakespeare.npz, else saves/checkpoint.npz)")
    source.add_argument("--coordinator", help="pull the live weights from a running coordinator, e.g. tcp://HOST:5555")


def load_from_args(args) -> Model:
    """Raises CheckpointError / PullError / FileNotFoundError with a message fit for the user."""
    if args.coordinator:
        from coordinator.client import pull_model
        return Model(*pull_model(args.coordinator))
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
