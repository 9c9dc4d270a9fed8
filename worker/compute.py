"""The worker's math as plain objects: a `work` and its `params` pieces in, `grad` pieces and a
`push` out (protocol/SPEC.md 4.4). No sockets: the socket loop feeds pieces in from its
thread while compute() runs in another."""
from __future__ import annotations

import threading
import time

import numpy as np

from model.config import Config
from model.masks import MaskSettings
from model.params import ParamLayout
from model.training import ChunkGradients, shape_sizes
from model.wire import narrow, widen, wire_dtype_of
from protocol import Message


class WorkAborted(Exception):
    """The work became moot, or its connection was lost, while it waited for parameters."""


class IncomingParams:
    """A step's parameter vector, filled piece by piece in order by the socket loop while
    compute threads wait for the piece they need next (each through its own watch())."""

    def __init__(self, pieces: list[tuple[int, int]], dtype, patience_s: float | None = None):
        self.pieces = pieces
        self.params = np.empty(pieces[-1][1], dtype)       # (P,)
        self.arrived = 0
        self.raw: list[np.ndarray] = []     # the pieces as they travelled, for forwarding (SPEC.md 4.5)
        self.aborted = False
        self.patience_s = patience_s        # None: forever
        self.condition = threading.Condition()

    def put(self, piece: int, array: np.ndarray) -> str | None:
        """Stores a piece (widened to the run's dtype); one it has is ignored. Returns why not,
        if it cannot."""
        if piece < self.arrived:
            return None
        if piece != self.arrived:
            return f"piece {piece} arrived when piece {self.arrived} was due"
        start, stop = self.pieces[piece]
        self.params[start:stop] = widen(array, self.params.dtype)
        self.raw.append(array)
        with self.condition:
            self.arrived += 1
            self.condition.notify_all()
        return None

    def abort(self) -> None:
        """Every watch gives up (the step is over, or the connection)."""
        with self.condition:
            self.aborted = True
            self.condition.notify_all()

    def watch(self) -> "ParamsWatch":
        return ParamsWatch(self)


class ParamsWatch:
    """One computation's wait for a step's parameters: abandoned on its own, without the others
    that share them (a worker's own group and a backup copy of the same step)."""

    def __init__(self, incoming: IncomingParams):
        self.incoming = incoming
        self.params = incoming.params
        self.aborted = False
        self.stalled = False        # no piece came for patience_s: lost with a broken connection
        self.waited_s = 0.0

    def abort(self) -> None:
        with self.incoming.condition:
            self.aborted = True
            self.incoming.condition.notify_all()

    def await_piece(self, piece: int) -> None:
        """Returns once piece `piece` is in; raises WorkAborted if the work was abandoned, or
        no piece came for patience_s, first."""
        incoming, started = self.incoming, time.perf_counter()
        with incoming.condition:
            while incoming.arrived <= piece and not (self.aborted or incoming.aborted):
                arrived = incoming.arrived
                if not incoming.condition.wait(incoming.patience_s) and incoming.arrived == arrived:
                    self.stalled = True
                    break
        self.waited_s += time.perf_counter() - started
        if incoming.arrived <= piece:
            raise WorkAborted(f"no parameter piece {piece} came for {incoming.patience_s:g}s" if self.stalled
                              else f"abandoned while waiting for parameter piece {piece}")


class WorkerCompute:
    def __init__(self, config: dict, vocab: str):
        self.config = Config.from_dict(config)
        self.layout = ParamLayout.for_model(len(vocab), self.config.layers, self.config.hidden,
                                             self.config.piece_elements)
        self.dtype = np.dtype(self.config.dtype)
        self.gradients = ChunkGradients(self.config, self.layout)
        self.dims = shape_sizes(self.config, self.layout)

    def incoming(self, patience_s: float | None = None) -> IncomingParams:
        return IncomingParams(self.layout.pieces, self.dtype, patience_s)

    def compute(self, work: Message, incoming: IncomingParams | ParamsWatch, emit,
                grad_out: np.ndarray | None = None, timings: dict | None = None) -> None:
        """Computes a work as its parameters arrive in `incoming`, passing each gradient piece
        to emit() as a `grad` message as soon as it is final (top layer first), then the
        `push`. grad_out: a (P,) buffer to write the gradient into, or None for a fresh one;
        the `grad` messages of the exact wire are views of it. timings, when given, gets
        "waited_s", the time spent waiting for parameters, before the push is emitted."""
        wire = wire_dtype_of(work["wire"])
        names = {"token": work["token"], "step": work["step"], "chunks": work["chunks"]}
        grad = np.empty(self.layout.total, self.dtype) if grad_out is None else grad_out

        def await_layer(layer: int) -> None:
            watch.await_piece(self.layout.layer_pieces(layer)[-1])

        def layer_done(layer: int) -> None:     # its pieces are final (SPEC.md 4.4)
            for piece in self.layout.layer_pieces(layer):
                start, stop = self.layout.pieces[piece]
                emit(Message("grad", {**names, "piece": piece, "prefix": False, "mac": ""},
                             {"grad": narrow(grad[start:stop], wire)}))

        watch = incoming.watch() if isinstance(incoming, IncomingParams) else incoming
        arrays = work.arrays
        result = self.gradients.compute(watch.params, work["step"], work["chunks"], arrays["inputs"],
                                        arrays["targets"], arrays["h"], arrays["c"], mask_settings=MaskSettings.of(work),
                                        out=grad, await_layer=await_layer, layer_done=layer_done)
        if timings is not None:
            timings["waited_s"] = watch.waited_s
        emit(Message("push", {**names, "loss": result.loss, "compute_s": result.compute_s - watch.waited_s},
                     {"h": result.h, "c": result.c}))
