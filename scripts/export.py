"""Write a small model-only file (parameters and meta, no optimizer state) for sampling,
evaluation and visualisation; sample.py, evaluate.py and visualize.py accept it like a checkpoint."""
import argparse
import os
import sys

import _paths

from model.checkpoint import CheckpointError, export_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=os.path.join(_paths.SAVES, "checkpoint.npz"),
                        help="training checkpoint or best.npz to export (default: %(default)s)")
    parser.add_argument("--out", required=True, help="the model-only .npz to write")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="storage precision; float16 halves the file, computation stays float32 "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        meta = export_model(args.checkpoint, args.out, args.dtype)
    except (CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB, step {meta.get('step')}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
