"""Command-line flags shared by every training entry point (train_local, coordinator)."""
from __future__ import annotations

import argparse

from .config import Config


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    group = parser.add_argument_group("training")
    group.add_argument("--corpus", default="saves/tinyshakespeare.txt",
                       help="training text, UTF-8 (default: %(default)s; fetch it with scripts/fetch_data.py)")
    group.add_argument("--save-dir", default="saves",
                       help="checkpoints and metrics.jsonl go here; a run resumes from "
                            "<save-dir>/checkpoint.npz (default: %(default)s)")
    stop = group.add_mutually_exclusive_group()
    stop.add_argument("--steps", type=int, help="train until the model has taken this many "
                      "optimizer steps in total (a resumed run counts earlier ones); 0 writes the "
                      "initial checkpoint and exits")
    stop.add_argument("--epochs", type=float, help="like --steps, counted in epochs (default: 50)")
    group.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    group.add_argument("--checkpoint-every", type=int, default=50,
                       help="write <save-dir>/checkpoint.npz every N steps (default: %(default)s)")
    group.add_argument("--seed", type=int, default=defaults.seed, help="initialisation seed (default: %(default)s)")
    group.add_argument("--layers", type=int, default=defaults.layers, help="LSTM layers (default: %(default)s)")
    group.add_argument("--hidden", type=int, default=defaults.hidden, help="units per layer (default: %(default)s)")
    group.add_argument("--chunks", type=int, default=defaults.chunks,
                       help="chunks the training text is cut into, trained as one batch (default: %(default)s)")
    group.add_argument("--chunk-len", type=int, default=defaults.chunk_len,
                       help="characters per chunk; 0 = the largest multiple of --seq-len that fits "
                            "(default: %(default)s)")
    group.add_argument("--seq-len", type=int, default=defaults.seq_len,
                       help="TBPTT window, k1 = k2 (default: %(default)s)")
    group.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                       help="held-out tail of the corpus for validation (default: %(default)s)")
    group.add_argument("--lr", type=float, default=defaults.lr, help="RMSprop learning rate (default: %(default)s)")
    group.add_argument("--rho", type=float, default=defaults.rho, help="RMSprop decay (default: %(default)s)")
    group.add_argument("--eps", type=float, default=defaults.eps, help="RMSprop epsilon (default: %(default)s)")
    group.add_argument("--clip", type=float, default=defaults.clip,
                       help="clip the mean gradient's global L2 norm to this; 0 disables (default: %(default)s)")
    group.add_argument("--dropout", type=float, default=defaults.dropout,
                       help="inverted dropout on each layer's output during training (default: %(default)s)")
    group.add_argument("--lr-decay", type=float, default=defaults.lr_decay,
                       help="multiply the learning rate by this once per epoch ... (default: %(default)s)")
    group.add_argument("--lr-decay-after", type=int, default=defaults.lr_decay_after,
                       help="... for each epoch completed beyond this many (default: %(default)s)")
    group.add_argument("--eval-every", type=int, default=None,
                       help="validation loss over the held-out text every N steps, in a background "
                            "process (default: once per epoch when --val-fraction > 0; 0 = never)")
    group.add_argument("--dtype", choices=("float32", "float64"), default=defaults.dtype,
                       help="float32 for speed, float64 for checks (default: %(default)s)")


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(layers=args.layers, hidden=args.hidden, seq_len=args.seq_len, chunks=args.chunks,
                  chunk_len=args.chunk_len, val_fraction=args.val_fraction, lr=args.lr,
                  rho=args.rho, eps=args.eps, clip=args.clip, dtype=args.dtype, seed=args.seed,
                  dropout=args.dropout, lr_decay=args.lr_decay, lr_decay_after=args.lr_decay_after)


def training_argv(args: argparse.Namespace) -> list[str]:
    """The training flags of parsed args as a command line, to hand on to a child process."""
    argv = ["--corpus", args.corpus, "--save-dir", args.save_dir,
            "--checkpoint-every", str(args.checkpoint_every)]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.fresh:
        argv.append("--fresh")
    if args.eval_every is not None:
        argv += ["--eval-every", str(args.eval_every)]
    for flag in ("seed", "layers", "hidden", "chunks", "chunk_len", "seq_len", "val_fraction",
                 "lr", "rho", "eps", "clip", "dtype", "dropout", "lr_decay", "lr_decay_after"):
        argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return argv
