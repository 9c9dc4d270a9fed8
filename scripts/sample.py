"""Sample text from a trained model, streamed to stdout as it is generated."""
import argparse
import sys

from _load import USER_ERRORS, add_model_arguments, load_from_args

from model.corpus import encode
from model.inference import sample


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--length", type=int, default=1000, help="characters to generate (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="divides the logits; lower is safer, higher is wilder; > 0 (default: %(default)s)")
    parser.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    parser.add_argument("--top-k", type=int, default=0, help="sample only among the k likeliest characters; 0 = all")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same text (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.temperature <= 0:
            raise ValueError(f"--temperature must be > 0 (got {args.temperature})")
        if args.length < 0 or args.top_k < 0:
            raise ValueError("--length and --top-k must be >= 0")
        model = load_from_args(args)
        encode(args.prime, model.vocab)
        for char in sample(model, args.length, args.prime, args.temperature, args.top_k, args.seed):
            sys.stdout.write(char)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except KeyboardInterrupt:
        return 130
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
