"""Write a small model-only file (parameters and meta, no optimizer state) for sampling,
evaluation and visualisation, from a checkpoint or from the live weights of a running
coordinator; sample.py, evaluate.py and visualize.py accept it like a checkpoint."""
import os
import sys

from model.cli import Parser
from _load import USER_ERRORS, add_model_arguments, check_model_arguments, checkpoint_path, load_meta_params

from model.checkpoint import FORMAT, CheckpointError, model_arrays, read_npz, write_npz_atomic


def check_out(out: str, source_path: str | None) -> str | None:
    """Refuses an --out that would replace the source or a training checkpoint (a model-only
    file has no optimizer state: a run could not resume from it). Returns a line to print when
    an older export is replaced."""
    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a folder; name the .npz file to write")
    if not os.path.exists(out):
        return None
    if source_path and os.path.exists(source_path) and os.path.samefile(out, source_path):
        raise ValueError(f"--out {out} is the file being exported; choose another name")
    try:
        existing = read_npz(out)["meta"].get("format")
    except CheckpointError:
        existing = None
    if existing == FORMAT:
        raise ValueError(f"--out {out} is a training checkpoint; writing a model-only file there would "
                         f"lose its optimizer state. Choose another name")
    return f"replacing {out}"


def main(argv=None) -> int:
    parser = Parser(description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="the model-only .npz to write")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="storage precision; float16 halves the file, computation stays float32 "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    try:
        meta, params, source = load_meta_params(args)
        replacing = check_out(args.out, checkpoint_path(args))
        if replacing:
            print(replacing, file=sys.stderr)
        write_npz_atomic(args.out, model_arrays(meta, params, args.dtype), compressed=True)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB, step {meta.get('step')}, "
          f"{args.dtype}) from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
