"""The project's one progress display, on stderr: a bar redrawn in place on a terminal, else
plain lines; every other message goes through message(), so lines from several processes never
run together. Training shows steps (update); long reads of a text show characters (advance)."""
from __future__ import annotations

import os
import sys
import threading
import time

BAR_WIDTH = 30
PLAIN_EVERY_S = 10.0    # without a terminal, long work says how far it got this often


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.lock = threading.Lock()
        self.first = None           # (done, time) of the first update seen
        self.bar_shown = False
        self.last_plain = time.monotonic()
        self.closed = False         # the reader went away (`| head`): a run stops with a checkpoint

    def _write(self, text: str) -> None:
        if self.closed:
            return
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except BrokenPipeError:
            self.closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)      # later writes, the exit's flush too, go nowhere
            for stream in (sys.stdout, sys.stderr):
                os.dup2(devnull, stream.fileno())

    def _eta(self, done: int, total: int) -> str:
        now = time.monotonic()
        if self.first is None:
            self.first = (done, now)
        progressed, seconds = done - self.first[0], now - self.first[1]
        if progressed > 0 and seconds > 0:
            return time.strftime("%H:%M:%S", time.gmtime((total - done) * seconds / progressed))
        return "--:--:--"

    def _bar(self, done: int, total: int, detail: str) -> None:
        eta = self._eta(done, total)
        filled = int(BAR_WIDTH * done / max(total, 1))
        with self.lock:
            self._write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {detail} ETA {eta}  ")
            self.bar_shown = True

    def update(self, line: dict) -> None:
        """A training step, from its metrics.jsonl line."""
        step, total = line["step"], line.get("target_step", line["step"])
        chars_per_s = line.get("chars_per_s") or 0.0
        if not self.enabled:
            self.message(f"step {step}/{total} epoch {line['epoch']:.3f} loss {line['loss']:.4f} "
                         f"chars/s {chars_per_s:.0f} workers {line.get('workers', 0)}")
            return
        self._bar(step, total, f"loss {line['loss']:.4f} {chars_per_s:,.0f} chars/s workers {line.get('workers', 0)}")

    def advance(self, done: int, total: int, what: str) -> None:
        """Long work over a text: `done` of `total` characters; `what` says what is being done."""
        if self.enabled:
            self._bar(done, total, what)
        elif time.monotonic() - self.last_plain >= PLAIN_EVERY_S or done >= total:
            self.last_plain = time.monotonic()
            self.message(f"{what}: {done:,} of {total:,} characters ({100 * done / max(total, 1):.0f} %)")

    def message(self, text: str) -> None:
        with self.lock:
            # a message takes the bar's line; the bar returns
            self._write(("\r\033[K" if self.bar_shown else "") + text + "\n")

    def close(self) -> None:
        if self.bar_shown:
            self._write("\n")
            self.bar_shown = False
