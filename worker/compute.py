"""The worker's math as plain objects: a `work` and its `params` pieces in, `grad` pieces and a
`push` out (protocol/SPEC.md 4.4). No sockets: the socket loop feeds pieces in from its
thread while compute() runs in another."""
from __future__ import annotations

import threading
import time

import numpy as np

from model.config import Config
from model.params import ParamLayout
from model.training import ChunkGradients, shape_sizes
from model.wire import narrow, widen, wire_dtype_of
from protocol import Message


class WorkAborted(Exception):
    """The work became moot, or its connection was lost, while it waited for parameters."""


class IncomingParams:
    """A work's parameter vector, filled piece by piece in order by the socket loop while the
    compute thread waits for the piece it needs next."""

    def __init__(self, pieces: list[tuple[int, int]], dtype, patience_s: float | None = None):
        self.pieces = pieces
        self.params = np.empty(pieces[-1][1], dtype)       # (P,)
        self.arrived = 0
        self.aborted = False
        self.stalled = False        # no piece came for patience_s (None: forever): lost with a broken connection
        self.patience_s = patience_s
        self.waited_s = 0.0
        self.condition = threading.Condition()

    def put(self, piece: int, array: np.ndarray) -> str | None:
        """Stores a piece (widened to the run's dtype); returns why not, if it cannot."""
        if piece != self.arrived:
            return f"piece {piece} arrived when piece {self.arrived} was due"
        start, stop = self.pieces[piece]
        self.params[start:stop] = widen(array, self.params.dtype)
        with self.condition:
            self.arrived += 1
            self.condition.notify_all()
        return None

    def abort(self) -> None:
        with self.condition:
            self.aborted = True
            self.condition.notify_all()

    def await_piece(self, piece: int) -> None:
        """Returns once piece `piece` is in; raises WorkAborted if the work was abandoned, or
        no piece came for patience_s, first."""
        started = time.perf_counter()
        with self.condition:
            while self.arrived <= piece and not self.aborted:
                arrived = self.arrived
                if not self.condition.wait(self.patience_s) and self.arrived == arrived:
                    self.stalled = True
                    break
        self.waited_s += time.perf_counter() - started
        if self.arrived <= piece:
            raise WorkAborted(f"no parameter piece {piece} came for {self.patience_s:g}s" if self.stalled
                              else f"abandoned while waiting for parameter piece {piece}")


class WorkerCompute:
    def __init__(self, config: dict, vocab: str):
        self.config = Config.from_dict(config)
        self.layout = ParamLayout.for_model(len(vocab), self.config.layers, self.config.hidden)
        self.dtype = np.dtype(self.config.dtype)
        self.gradients = ChunkGradients(self.config, self.layout)
        self.dims = shape_sizes(self.config, self.layout)

    def incoming(self, patience_s: float | None = None) -> IncomingParams:
        return IncomingParams(self.layout.pieces, self.dtype, patience_s)

    def compute(self, work: Message, incoming: IncomingParams, emit, grad_out: np.ndarray | None = None) -> None:
        """Computes a work as its parameters arrive in `incoming`, passing each gradient piece
        to emit() as a `grad` message as soon as it is final (top layer first), then the
        `push`. grad_out: a (P,) buffer to write the gradient into, or None for a fresh one;
        the `grad` messages of the exact wire are views of it."""
        wire = wire_dtype_of(work["wire"])
        names = {"token": work["token"], "step": work["step"], "chunks": work["chunks"]}
        grad = np.empty(self.layout.total, self.dtype) if grad_out is None else grad_out

        def layer_done(layer: int) -> None:     # a layer's gradient is its piece's (SPEC.md 4.4)
            start, stop = self.layout.pieces[layer]
            emit(Message("grad", {**names, "piece": layer}, {"grad": narrow(grad[start:stop], wire)}))

        arrays = work.arrays
        result = self.gradients.compute(incoming.params, work["step"], work["chunks"], arrays["inputs"],
                                        arrays["targets"], arrays["h"], arrays["c"], dropout=work["dropout"],
                                        seed=work["seed"], out=grad, await_layer=incoming.await_piece,
                                        layer_done=layer_done)
        emit(Message("push", {**names, "loss": result.loss, "compute_s": result.compute_s - incoming.waited_s},
                     {"h": result.h, "c": result.c}))
