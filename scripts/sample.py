"""Sample text from a trained model, streamed to stdout as it is generated. Which model is
sampling is said on stderr: your own saves/checkpoint.npz when it exists, else the shipped one."""
import argparse
import os
import sys

from model.cli import Parser, non_negative_int
from _load import USER_ERRORS, add_model_arguments, check_model_arguments, finite_positive, load_from_args

from model.corpus import encode
from model.inference import sample


def temperature(text: str) -> float:
    try:
        return finite_positive(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text!r}") from None


def main(argv=None) -> int:
    parser = Parser(description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--length", type=non_negative_int, default=1000, help="characters to generate (default: %(default)s)")
    parser.add_argument("--temperature", type=temperature, default=0.8,
                        help="divides the logits; lower is safer, higher is wilder; > 0 (default: %(default)s)")
    parser.add_argument("--prime", default="\n", help="text to start from, printed before the sample "
                        "(default: a newline)")
    parser.add_argument("--no-echo", action="store_true", help="do not print the prime before the sample")
    parser.add_argument("--top-k", type=non_negative_int, default=0, help="sample only among the k likeliest characters; 0 = all")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed; same seed, same text (default: %(default)s)")
    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    try:
        model = load_from_args(args)
        encode(args.prime, model.vocab)
        print(model.source, file=sys.stderr, flush=True)
        if not args.no_echo:
            sys.stdout.write(args.prime)
        for char in sample(model, args.length, args.prime, args.temperature, args.top_k, args.seed):
            sys.stdout.write(char)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader stopped (`| head`): a normal way to end; keep the exit-time flush quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
