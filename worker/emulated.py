"""A worker whose math is a wait (scripts/netbench.py --dilation): the real protocol — parameter
pieces awaited layer by layer, gradient pieces streamed top layer first, relayed, summed, digested —
around a sleep as long as the real computation of the group measured on one core, times the
dilation. With every link's rate divided by the same factor, one machine stands for many: the
protocol's own CPU shrinks beside the emulated time. The gradient is a real array (its values
a pure function of the step and the chunks), so sums and checks do real work; it trains nothing."""
from __future__ import annotations

import time

import numpy as np

from model.wire import narrow, wire_dtype_of
from protocol import Message
from .compute import IncomingParams, WorkerCompute

# Shares of one group's compute, by phase (timed with the streaming hooks, README scaling model):
# layer 0's forward pass (a gather), the layers above, then backward top layer first.
FORWARD_SHARES = (0.17, 0.28)
BACKWARD_SHARES = (0.33, 0.22)      # (top, layer 0)


def compute_times(spec: str) -> dict[int, float]:
    """"1:0.106,13:0.62,25:1.144" -> {chunks: seconds on one core}."""
    pairs = [item.split(":") for item in spec.split(",") if item]
    return {int(chunks): float(seconds) for chunks, seconds in pairs}


def seconds_for(times: dict[int, float], chunks: int) -> float:
    """The measured time of a group of `chunks`; between (or beyond) measured sizes, the line
    through the nearest two (netbench.py measures every size it needs)."""
    if chunks in times or len(times) == 1:
        return times.get(chunks, next(iter(times.values())) * chunks / next(iter(times)))
    a, b = sorted(times, key=lambda size: (abs(size - chunks), size))[:2]
    return times[a] + (times[b] - times[a]) * (chunks - a) / (b - a)


class EmulatedCompute(WorkerCompute):
    def __init__(self, config: dict, vocab: str, times: dict[int, float], dilation: float):
        super().__init__(config, vocab)
        if self.config.layers != 2:
            raise ValueError("the emulated worker models the 2-layer default model's phases")
        self.times, self.dilation, self.vocab_size = times, dilation, len(vocab)

    def compute(self, work: Message, incoming, emit, grad_out=None, timings=None) -> None:
        wire = wire_dtype_of(work["wire"])
        names = {"token": work["token"], "step": work["step"], "chunks": work["chunks"]}
        grad = np.empty(self.layout.total, self.dtype) if grad_out is None else grad_out
        watch = incoming.watch() if isinstance(incoming, IncomingParams) else incoming
        total = seconds_for(self.times, len(work["chunks"])) * self.dilation
        started = time.perf_counter()
        for layer, share in enumerate(FORWARD_SHARES):
            watch.await_piece(self.layout.layer_pieces(layer)[-1])
            time.sleep(share * total)
        grad.fill(1e-3 * (1 + work["step"] % 7) * (1 + work["chunks"][0]))
        for layer, share in zip((1, 0), BACKWARD_SHARES):
            time.sleep(share * total)
            for piece in self.layout.layer_pieces(layer):
                start, stop = self.layout.pieces[piece]
                emit(Message("grad", {**names, "piece": piece, "prefix": False, "mac": ""},
                             {"grad": narrow(grad[start:stop], wire)}))
        if timings is not None:
            timings["waited_s"] = watch.waited_s
        loss = float(np.log(self.vocab_size)) * len(work["chunks"]) * self.config.seq_len     # a uniform model's
        emit(Message("push", {**names, "loss": loss, "compute_s": time.perf_counter() - started - watch.waited_s},
                     {"h": np.array(work.arrays["h"]), "c": np.array(work.arrays["c"])}))
