"""Training curves from metrics.jsonl as a self-contained HTML/SVG page (nothing to install)."""
from __future__ import annotations

import html
import json
import math
import os

WIDTH, HEIGHT, PAD = 640, 320, 48


def read_metrics(path: str) -> tuple[list[dict], list[dict]]:
    """(training lines, validation lines); a resumed run's repeated steps keep their last value."""
    train, val = {}, {}
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue                      # a line cut short by a kill
            (val if "val_loss" in line else train)[line["step"]] = line
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for k, value in enumerate(values):
        total += value
        if k >= window:
            total -= values[k - window]
        out.append(total / min(k + 1, window))
    return out


def _chart(title: str, xlabel: str, series: list[tuple[str, str, list, list]]) -> str:
    series = [entry for entry in series if entry[2]]      # a legend names only what is drawn
    xs = [x for _, _, sx, _ in series for x in sx]
    ys = [y for _, _, _, sy in series for y in sy]
    if not xs:
        return f"<p>{html.escape(title)}: no data yet</p>"
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = math.floor(min(ys) * 10) / 10, math.ceil(max(ys) * 10) / 10
    clipped = y1 > y0 + 2.0              # the first steps' loss would squash the interesting part
    if clipped:
        y1 = y0 + 2.0
        title += f" (axis clipped at {y1:.1f})"
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 0.1)

    def px(x): return PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)
    def py(y): return HEIGHT - PAD - (min(y, y1) - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    for k in range(6):
        y = y0 + (y1 - y0) * k / 5
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>'
                     f'<text x="{PAD - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
        x = x0 + (x1 - x0) * k / 5
        label = f"{x:,.0f}" if x1 - x0 >= 20 else f"{x:.2g}"
        parts.append(f'<text x="{px(x):.1f}" y="{HEIGHT - PAD + 14}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">{html.escape(xlabel)}</text>'
                 f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" '
                 f'text-anchor="middle">loss (nats/char)</text>')
    for k, (name, colour, sx, sy) in enumerate(series):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(sx, sy))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        if len(sx) < 2:         # a single validation has no line to draw: a dot shows it
            parts.append(f'<circle cx="{px(sx[0]):.1f}" cy="{py(sy[0]):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - PAD - 4}" y="{PAD + 14 * k}" text-anchor="end" fill="{colour}">'
                     f'{html.escape(name)}</text>')
    return "".join(parts) + "</svg>"


def step_chart_svg(metrics_path: str) -> str:
    """The loss-against-step chart alone, as a standalone SVG file's text."""
    train, val = read_metrics(metrics_path)
    return _chart("tiny shakespeare: loss against step", "optimizer step",
                  [("training (moving average of 25)", "#1f77b4", [m["step"] for m in train],
                    moving_average([m["loss"] for m in train], 25)),
                   ("validation (held-out last 10%)", "#d62728", [m["step"] for m in val],
                    [m["val_loss"] for m in val])])


def curves_html(metrics_path: str) -> str:
    train, val = read_metrics(metrics_path)
    smooth = moving_average([m["loss"] for m in train], 25)
    train_steps, val_steps = [m["step"] for m in train], [m["step"] for m in val]
    hours = [m["elapsed_s"] / 3600 for m in train]
    val_hours = [m["elapsed_s"] / 3600 for m in val]
    val_loss = [m["val_loss"] for m in val]
    best = min(val, key=lambda m: m["val_loss"]) if val else None
    summary = (f"best validation loss {best['val_loss']:.4f} nats/char ({best['val_bits']:.4f} bits) at step "
               f"{best['step']}" if best else "no validation yet")
    averaged = [m for m in val if "average_val_loss" in m]         # with --ema-decay
    average_loss = [m["average_val_loss"] for m in averaged]
    charts = [_chart("loss against step", "optimizer step",
                     [("training (moving average of 25)", "#1f77b4", train_steps, smooth),
                      ("validation", "#d62728", val_steps, val_loss),
                      ("validation, averaged parameters", "#2ca02c", [m["step"] for m in averaged], average_loss)]),
              _chart("loss against wall time", "hours of training",
                     [("training (moving average of 25)", "#1f77b4", hours, smooth),
                      ("validation", "#d62728", val_hours, val_loss),
                      ("validation, averaged parameters", "#2ca02c", [m["elapsed_s"] / 3600 for m in averaged],
                       average_loss)])]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>training curves</title></head>"
            f"<body style='font-family:sans-serif'><h1>Training curves</h1><p>{html.escape(summary)}; "
            f"{len(train)} steps logged.</p>{''.join(charts)}</body></html>")


def write_curves(save_dir: str) -> str | None:
    metrics = os.path.join(save_dir, "metrics.jsonl")
    if not os.path.exists(metrics):
        return None
    out = os.path.join(save_dir, "curves.html")
    with open(out + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(curves_html(metrics))
    os.replace(out + ".tmp", out)
    return out
