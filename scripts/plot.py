"""Training and validation loss against step and wall time: a self-contained HTML/SVG page
(needs nothing installed) and, with --png, a PNG via matplotlib (an optional extra)."""
import os
import sys


from model.cli import Parser
from model.curves import moving_average, read_metrics, step_chart_svg, write_curves


def write_png(save_dir: str, out: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--png needs matplotlib: pip install matplotlib") from None
    train, val = read_metrics(os.path.join(save_dir, "metrics.jsonl"))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in ((axes[0], "step", "optimizer step"), (axes[1], "elapsed_s", "hours")):
        scale = 3600 if key == "elapsed_s" else 1
        axis.plot([m[key] / scale for m in train], moving_average([m["loss"] for m in train], 25),
                  label="training (moving average of 25)")
        axis.plot([m[key] / scale for m in val], [m["val_loss"] for m in val], "o-", label="validation")
        axis.set_xlabel(label)
        axis.set_ylabel("loss (nats/char)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)


def main(argv=None) -> int:
    parser = Parser(description=__doc__)
    parser.add_argument("--save-dir", default="saves", help="folder with metrics.jsonl (default: %(default)s)")
    parser.add_argument("--png", help="also write this PNG (needs matplotlib)")
    parser.add_argument("--svg", help="also write the loss-against-step chart alone as this SVG; a bare "
                        "file name goes into --save-dir")
    args = parser.parse_args(argv)
    try:
        page = write_curves(args.save_dir)
    except OSError as error:
        print(f"error: cannot write the curves page into {args.save_dir} ({error.strerror})", file=sys.stderr)
        return 2
    if page is None:
        print(f"error: no metrics.jsonl in {args.save_dir}; train first", file=sys.stderr)
        return 2
    print(f"wrote {page}")
    if args.svg:
        if not os.path.dirname(args.svg):
            args.svg = os.path.join(args.save_dir, args.svg)
        try:
            with open(args.svg, "w", encoding="utf-8") as handle:
                handle.write(step_chart_svg(os.path.join(args.save_dir, "metrics.jsonl")))
        except OSError as error:
            print(f"error: cannot write --svg {args.svg} ({error.strerror}); name a file in a folder "
                  f"you can write to", file=sys.stderr)
            return 2
        print(f"wrote {args.svg}")
    if args.png:
        try:
            write_png(args.save_dir, args.png)
        except (RuntimeError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
