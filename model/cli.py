"""Command-line flags shared by every training entry point (train_local, coordinator).

The model's and optimizer's flags are derived from Config's fields; the run's own flags (what
to train on, where to save, how long) are declared here once."""
from __future__ import annotations

import argparse
import math

from .config import RESOLVED_LATER, Config

TYPES = {"int": int, "float": float, "str": str}
DEFAULT_EPOCHS = 50


class Parser(argparse.ArgumentParser):
    """Every command's parser: whole flag names only (no prefix matching), and a usage error is
    one line, `error: ...`, with exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def share(text: str) -> float:
    """A fraction of steps, in [0, 1]."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], not {text}")
    return value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--corpus", default="saves/tinyshakespeare.txt",
                       help="training text, UTF-8 (default: %(default)s; fetch it with scripts/fetch_data.py)")
    group.add_argument("--save-dir", default="saves",
                       help="checkpoints and metrics.jsonl go here; a run resumes from "
                            "<save-dir>/checkpoint.npz (default: %(default)s)")
    stop = group.add_mutually_exclusive_group()
    stop.add_argument("--steps", type=non_negative_int, help="train until the model has taken this "
                      "many optimizer steps in total (a resumed run counts earlier ones); 0 writes "
                      "the initial checkpoint and exits")
    stop.add_argument("--epochs", type=positive_float,
                      help=f"like --steps, counted in epochs (default: {DEFAULT_EPOCHS})")
    group.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    group.add_argument("--checkpoint-every", type=positive_int, default=50,
                       help="write <save-dir>/checkpoint.npz every N steps (default: %(default)s)")
    group.add_argument("--eval-every", type=non_negative_int, default=None,
                       help="validation loss over the held-out text every N steps, in a background "
                            "process (default: once per epoch when --val-fraction > 0; 0 = never)")
    # default None: a flag not given is told apart from one given with the default value, so a
    # resumed run keeps the checkpoint's value of every setting no flag names
    for field in Config.fields():
        kind = TYPES[field.type]
        group.add_argument(flag(field.name), type=finite_float if kind is float else kind,
                           default=None, choices=field.metadata["choices"],
                           help=field.metadata["help"] + f" (default: {field.default}; a resumed run "
                                "keeps its own)")


def explicit_settings(args: argparse.Namespace) -> dict:
    """The Config fields a flag (or a recipe's defaults) gave, with their values."""
    return {f.name: getattr(args, f.name) for f in Config.fields() if getattr(args, f.name) is not None}


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's config as the flags ask: given flags, else each field's default."""
    return Config(**explicit_settings(args))


def training_argv(args: argparse.Namespace) -> list[str]:
    """The training flags of parsed args as a command line, to hand on to a child process."""
    argv = ["--corpus", args.corpus, "--save-dir", args.save_dir,
            "--checkpoint-every", str(args.checkpoint_every)]
    for name in ("steps", "epochs", "eval_every"):
        if getattr(args, name) is not None:
            argv += [flag(name), str(getattr(args, name))]
    if args.fresh:
        argv.append("--fresh")
    for name, value in explicit_settings(args).items():
        argv += [flag(name), str(value)]
    return argv


class RecipeError(ValueError):
    """A recipe file that cannot be read or names a flag the command does not have."""


def load_recipe(path: str, parser: argparse.ArgumentParser) -> dict:
    """A recipe: a JSON file {"flags": {dest: value}, "export": PATH, ...} that fixes a whole
    training run in advance. Its flags become the parser's defaults; flags given on the command
    line still win (and change the result)."""
    import json
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecipeError(f"cannot read recipe {path}: {error}") from None
    flags = recipe.get("flags") if isinstance(recipe, dict) else None
    if not isinstance(flags, dict):
        raise RecipeError(f"recipe {path} has no \"flags\" object")
    known = vars(parser.parse_args([]))
    unknown = sorted(set(flags) - set(known))
    if unknown:
        raise RecipeError(f"recipe {path} names flags this command does not have: {unknown}")
    parser.set_defaults(**flags)
    return recipe


# Besides Config's fields, the flags whose values change what a recipe's run ends with: what it
# reads, how its chunks are batched (the bits depend on it), how long it trains, when it
# validates (which checkpoint is best).
RESULT_FLAGS = ("corpus", "workers", "steps", "epochs", "eval_every")


def recipe_departures(args: argparse.Namespace, recipe_args: argparse.Namespace, meta: dict) -> list[str]:
    """How a run differs from its recipe, in words: the flags given over the recipe's (args
    against recipe_args, the recipe's parse of an empty command line) and the settings its
    checkpoint (meta) was trained with, which a resumed run keeps whatever the flags say."""
    departures = []
    for name in tuple(f.name for f in Config.fields()) + RESULT_FLAGS:
        given, asked = getattr(args, name, None), getattr(recipe_args, name, None)
        if given != asked:
            departures.append(f"{flag(name)} {given} (recipe: {asked})")
    recipe_config = config_from_args(recipe_args)
    for field in Config.fields():
        asked = getattr(recipe_config, field.name)
        if RESOLVED_LATER.get(field.name) == asked:
            continue        # the recipe leaves it to the run
        trained = meta.get(field.name, field.default)
        if trained != asked and not any(d.startswith(flag(field.name) + " ") for d in departures):
            departures.append(f"checkpoint {field.name} {trained} (recipe: {asked})")
    return departures


def target_steps(steps: int | None, epochs: float | None, steps_per_epoch: int) -> int:
    """The step a run trains to: --steps, else --epochs (default DEFAULT_EPOCHS) in steps."""
    if steps is not None:
        return steps
    return round((DEFAULT_EPOCHS if epochs is None else epochs) * steps_per_epoch)
