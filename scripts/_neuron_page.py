"""Self-contained HTML (and optional PNG) pictures of single neurons over a text."""
import html
import json

import numpy as np

STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
.text{font-family:monospace;font-size:14px;line-height:1.55;white-space:pre-wrap;word-break:break-all;
border:1px solid #ddd;padding:.6em}
.c{cursor:default}.nl{color:#bbb}
.legend{display:flex;align-items:center;gap:.5em;margin:.6em 0}
.bar{width:220px;height:14px;border:1px solid #aaa;background:linear-gradient(to right,#ffffff,#ff0000)}
#tip{position:fixed;display:none;background:#fffbe6;border:1px solid #999;padding:.4em .6em;
font:12px monospace;white-space:pre;pointer-events:none;z-index:9}
table{border-collapse:collapse}td,th{padding:.2em .7em;border-bottom:1px solid #eee;text-align:left}
"""
SCRIPT = """
const tip=document.getElementById('tip');
document.querySelectorAll('.c').forEach(e=>{
 e.addEventListener('mousemove',ev=>{tip.textContent='value '+e.dataset.v+'\\nnext: '+e.dataset.p.split('|').join('\\n      ');
  tip.style.display='block';tip.style.left=(ev.clientX+12)+'px';tip.style.top=(ev.clientY+12)+'px';});
 e.addEventListener('mouseleave',()=>{tip.style.display='none';});});
"""


def colour(value: float) -> tuple[int, int, int]:
    """-1 -> white, +1 -> red, linearly; values outside are clipped."""
    fraction = (min(1.0, max(-1.0, float(value))) + 1) / 2
    other = round(255 * (1 - fraction))
    return 255, other, other


def _shown(ch: str) -> str:
    return "↵\n" if ch == "\n" else html.escape(ch)


def _named(ch: str) -> str:
    """A character as the tooltip shows it: a space as ␣ (a blank would read as nothing)."""
    return "␣" if ch == " " else json.dumps(ch)[1:-1]


def top_predictions(probs: np.ndarray, vocab: str, k: int = 5) -> str:
    best = np.argsort(-probs)[:k]
    return "|".join(f"{_named(vocab[i])} {probs[i]:.3f}" for i in best)


def text_block(text: str, values: np.ndarray, probs: np.ndarray, vocab: str) -> str:
    cells = []
    for ch, value, row in zip(text, values, probs):
        r, g, b = colour(value)
        klass = "c nl" if ch == "\n" else "c"
        cells.append(f'<span class="{klass}" style="background:rgb({r},{g},{b})" data-v="{value:.4f}" '
                     f'data-p="{html.escape(top_predictions(row, vocab))}">{_shown(ch)}</span>')
    return '<div class="text">' + "".join(cells) + "</div>"


def page(title: str, body: str) -> str:
    legend = ('<div class="legend"><span>−1</span><div class="bar"></div><span>+1</span>'
              '<span>(white = −1, red = +1; hover a character for its value and the model\'s '
              'top-5 next characters)</span></div>')
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{legend}{body}"
            f"<div id='tip'></div><script>{SCRIPT}</script></body></html>")


def neuron_section(label: str, text: str, values: np.ndarray, probs: np.ndarray, vocab: str) -> str:
    return f"<h2>{html.escape(label)}</h2>" + text_block(text, values, probs, vocab)


def index_page(title: str, ranking: dict, links: dict, absent=()) -> str:
    rows = []
    for feature, entries in ranking.items():
        for rank, (layer, neuron, score) in enumerate(entries, 1):
            href = links.get((layer, neuron))
            cell = f'<a href="{href}">layer {layer} neuron {neuron}</a>' if href else f"layer {layer} neuron {neuron}"
            rows.append(f"<tr><td>{html.escape(feature) if rank == 1 else ''}</td><td>{rank}</td>"
                        f"<td>{cell}</td><td>{score:.3f}</td></tr>")
    table = ("<p>Score: absolute Pearson correlation over the text between the neuron's activation "
             "after each character and the feature's value there.</p><table><tr><th>feature</th><th>#</th>"
             "<th>neuron</th><th>score</th></tr>" + "".join(rows) + "</table>")
    if absent:
        table += ("<p>Not present in this text (constant throughout, so no neuron can track them): "
                  + ", ".join(html.escape(name) for name in absent) + ".</p>")
    return page(title, table)


PNG_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", "DejaVuSansMono.ttf")
PNG_FONT_SIZE = 14


def _png_font(ImageFont):
    """A readable monospace font and its cell size: DejaVu Sans Mono where installed, else
    Pillow's own scalable default (10.1+), else its small bitmap font."""
    for name in PNG_FONTS:
        try:
            return ImageFont.truetype(name, PNG_FONT_SIZE), (9, 18)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=PNG_FONT_SIZE), (9, 18)
    except TypeError:
        return ImageFont.load_default(), (8, 14)


def write_png(path: str, text: str, values: np.ndarray, columns: int = 100) -> None:
    """The same picture as a PNG with Pillow (an optional extra: pip install pillow)."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise RuntimeError("--png needs Pillow: pip install pillow") from None
    font, (cell_w, cell_h) = _png_font(ImageFont)
    positions, row, col = [], 0, 0
    for ch in text:
        positions.append((row, col))
        if ch == "\n" or col + 1 >= columns:
            row, col = row + 1, 0
        else:
            col += 1
    image = Image.new("RGB", (columns * cell_w + 8, (row + 1) * cell_h + 8), "white")
    draw = ImageDraw.Draw(image)
    for ch, value, (r, c) in zip(text, values, positions):
        x, y = 4 + c * cell_w, 4 + r * cell_h
        draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=colour(value))
        if ch.strip():
            draw.text((x, y), ch, fill="black", font=font)
    image.save(path)
