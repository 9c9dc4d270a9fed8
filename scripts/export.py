"""Write a small model-only file (parameters and meta, no optimizer state) for sampling,
evaluation and visualisation, from a checkpoint or from the live weights of a running
coordinator; sample.py, evaluate.py and visualize.py accept it like a checkpoint."""
import os
import sys

from model.cli import Parser
from _load import USER_ERRORS, add_model_arguments, load_meta_params

from model.checkpoint import model_arrays, write_npz_atomic


def main(argv=None) -> int:
    parser = Parser(description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="the model-only .npz to write")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="storage precision; float16 halves the file, computation stays float32 "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        meta, params, source = load_meta_params(args)
        write_npz_atomic(args.out, model_arrays(meta, params, args.dtype), compressed=True)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB, step {meta.get('step')}, "
          f"{args.dtype}) from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
