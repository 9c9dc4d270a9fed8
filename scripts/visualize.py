"""Pictures of single neurons: each character's background coloured by one neuron's activation
(white = -1 through red = +1), as a self-contained HTML page; --find ranks every neuron against
named character-level features and writes an index page."""
import os
import re
import sys

import _paths
import numpy as np
from model.cli import Parser, positive_int
from _load import USER_ERRORS, add_model_arguments, check_model_arguments, load_from_args, read_text_file
from _neuron_page import index_page, neuron_section, page, write_png

from model.corpus import encode, read_corpus, split_point
from model.inference import QUANTITIES, activations, sample, stream_activations
from model.neurons import FeatureScores, features
from model.progress import Progress

DEFAULT_CORPUS = os.path.join(_paths.SAVES, "tinyshakespeare.txt")
DEFAULT_LENGTH = 2000
DEFAULT_EXCERPT = 2000
NEURON_PAGE = re.compile(r"^layer\d+_neuron\d+\.html$")     # what --find writes, one page per neuron


def default_text(model, length: int) -> str:
    """The start of the held-out tail of the corpus, else the model's own text."""
    if os.path.exists(DEFAULT_CORPUS):
        text = read_corpus(DEFAULT_CORPUS)
        return text[split_point(len(text), 0.1):][:length]
    return "\n" + "".join(sample(model, length - 1, "\n", 0.8, seed=0))


def shown_values(acts: dict, quantity: str, layer: int, neuron: int) -> np.ndarray:
    values = acts[quantity][layer, :, neuron]
    return np.tanh(values) if quantity == "c" else values    # c through tanh so it stays in -1..1


def excerpt_label(text: str, excerpt: str) -> str:
    return "" if len(excerpt) == len(text) else f" (first {len(excerpt):,} of {len(text):,} characters)"


def find(model, text: str, excerpt: str, out_dir: str, top: int, quantity: str) -> str:
    """Scores every neuron over the whole text in bounded memory; pages show the excerpt."""
    scores = FeatureScores(features(text))
    progress = Progress(True)
    for start, acts in stream_activations(model, text, quantity):          # acts (L, w, H)
        scores.add(start, acts.transpose(0, 2, 1).reshape(-1, acts.shape[1]))
        progress.advance(start + acts.shape[1], len(text), "scoring every neuron")
    progress.close()
    ranking = scores.ranking(model.hidden, top)
    acts = activations(model, excerpt)
    os.makedirs(out_dir, exist_ok=True)
    links = {}
    for entries in ranking.values():
        for layer, neuron, _ in entries:
            if (layer, neuron) in links:
                continue
            name = links[(layer, neuron)] = f"layer{layer}_neuron{neuron}.html"
            section = neuron_section(f"layer {layer}, neuron {neuron}, {quantity}{excerpt_label(text, excerpt)}",
                                     excerpt, shown_values(acts, quantity, layer, neuron), acts["probs"],
                                     model.vocab)
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as handle:
                handle.write(page(f"layer {layer} neuron {neuron}", section))
    stale = [f for f in os.listdir(out_dir) if NEURON_PAGE.match(f) and f not in links.values()]
    for name in stale:
        os.unlink(os.path.join(out_dir, name))
    if stale:
        print(f"removed {len(stale)} neuron pages of an earlier --find from {out_dir}", file=sys.stderr)
    absent = [name for name in scores.names if name not in ranking]
    index = os.path.join(out_dir, "index.html")
    with open(index, "w", encoding="utf-8") as handle:
        handle.write(index_page(f"Neurons that track character-level features ({quantity}) over "
                                f"{len(text):,} characters", ranking, links, absent))
    print(f"{'feature':24s} {'rank':>4s}  {'layer':>5s} {'neuron':>6s}  score")
    for feature, entries in ranking.items():
        for rank, (layer, neuron, score) in enumerate(entries, 1):
            print(f"{feature if rank == 1 else '':24s} {rank:4d}  {layer:5d} {neuron:6d}  {score:.3f}")
    for feature in absent:
        print(f"{feature:24s} not present in this text")
    return index


def main(argv=None) -> int:
    parser = Parser(description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--text", help="UTF-8 file to run through the model (default: 2,000 chars of the "
                        "held-out tail of saves/tinyshakespeare.txt, else text the model samples)")
    parser.add_argument("--length", type=positive_int,
                        help=f"use the first N characters of the text (default: {DEFAULT_LENGTH:,} of the "
                             "default text, all of a --text file)")
    parser.add_argument("--excerpt", type=positive_int, default=DEFAULT_EXCERPT,
                        help="characters shown on each page; --find still scores the whole text "
                             "(default: %(default)s)")
    parser.add_argument("--layer", type=int, default=0, help="layer of the neuron(s) (default: %(default)s)")
    parser.add_argument("--neuron", type=int, nargs="+", default=[0], help="one or several neuron indices")
    parser.add_argument("--quantity", default="h", help=f"one of {', '.join(QUANTITIES)} (default: h; "
                        "c is shown through tanh)")
    parser.add_argument("--out", help="output page (default: saves/neurons.html), or folder with --find "
                        "(default: saves/neurons/)")
    parser.add_argument("--png", action="store_true", help="also write a PNG of each picture (needs Pillow)")
    parser.add_argument("--find", action="store_true", help="rank every neuron against named features")
    parser.add_argument("--top", type=positive_int, default=5, help="neurons listed per feature with --find (default: %(default)s)")
    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    try:
        if args.quantity not in QUANTITIES:
            raise ValueError(f"unknown --quantity {args.quantity!r}; choose one of {', '.join(QUANTITIES)}")
        model = load_from_args(args)
        print(model.source, file=sys.stderr)
        if not 0 <= args.layer < model.layers:
            raise ValueError(f"--layer {args.layer} is out of range: the model has layers 0..{model.layers - 1}")
        bad = [n for n in args.neuron if not 0 <= n < model.hidden]
        if bad:
            raise ValueError(f"--neuron {bad[0]} is out of range: layers have neurons 0..{model.hidden - 1}")
        if args.text:
            text = read_text_file(args.text)[:args.length]
        else:
            text = default_text(model, args.length or DEFAULT_LENGTH)
        encode(text, model.vocab)              # unknown characters: one line, before any work
        excerpt = text[:args.excerpt]
        if args.find:
            out_dir = args.out or os.path.join(_paths.SAVES, "neurons")
            print(f"wrote {find(model, text, excerpt, out_dir, args.top, args.quantity)}")
            return 0
        acts = activations(model, excerpt)
        out = args.out or os.path.join(_paths.SAVES, "neurons.html")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        sections = []
        for neuron in args.neuron:
            values = shown_values(acts, args.quantity, args.layer, neuron)
            sections.append(neuron_section(f"layer {args.layer}, neuron {neuron}, {args.quantity}"
                                           f"{excerpt_label(text, excerpt)}", excerpt, values, acts["probs"],
                                           model.vocab))
            if args.png:
                png = os.path.splitext(out)[0] + f"_l{args.layer}n{neuron}.png"
                write_png(png, excerpt, values)
                print(f"wrote {png}")
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(page(f"layer {args.layer}: {args.quantity} of neuron(s) "
                              f"{', '.join(map(str, args.neuron))}", "".join(sections)))
        print(f"wrote {out}")
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; pages already written are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
