"""Mean next-character loss of a model over a text (state carried from zero), in nats and bits."""
import json
import sys

from model.cli import Parser
from _load import USER_ERRORS, add_model_arguments, check_model_arguments, load_from_args, read_text_file

from model.corpus import split_point
from model.progress import Progress
from model.inference import evaluate


def main(argv=None) -> int:
    parser = Parser(description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--text", required=True, help="UTF-8 text file to evaluate on")
    parser.add_argument("--tail-fraction", type=float, default=None,
                        help="evaluate only the last fraction of the text, e.g. 0.1 for the held-out "
                             "split of --val-fraction 0.1 (default: the whole text)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    try:
        if args.tail_fraction is not None and not 0 < args.tail_fraction <= 1:
            raise ValueError(f"--tail-fraction must be in (0, 1] (got {args.tail_fraction})")
        model = load_from_args(args)
        text = read_text_file(args.text)
        if args.tail_fraction is not None:
            text = text[split_point(len(text), args.tail_fraction):]
        progress = Progress(True)
        print(model.source, file=sys.stderr)
        result = evaluate(model, text, on_progress=lambda done, total, nats: progress.advance(
            done, total, f"evaluating, {nats:.4f} nats/char so far"))
        progress.close()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['nats_per_char']:.4f} nats/char  {result['bits_per_char']:.4f} bits/char  "
              f"over {result['chars']} predictions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
