"""The worker's math as a plain object: a `work` message in, a `push` message out. No sockets."""
from __future__ import annotations

import numpy as np

from model.config import Config
from model.params import ParamLayout
from model.training import ChunkGradients, shape_sizes
from model.wire import narrow, widen, wire_dtype_of
from protocol import Message


class WorkerCompute:
    def __init__(self, config: dict, vocab: str):
        self.config = Config.from_dict(config)
        self.layout = ParamLayout.for_model(len(vocab), self.config.layers, self.config.hidden)
        self.dtype = np.dtype(self.config.dtype)
        self.gradients = ChunkGradients(self.config, self.layout)
        self.dims = shape_sizes(self.config, self.layout)

    def compute(self, work: Message, grad_out: np.ndarray | None = None) -> Message:
        """grad_out: a (P,) buffer to write the gradient into, or None for a fresh one."""
        arrays, wire = work.arrays, wire_dtype_of(work["wire"])
        result = self.gradients.compute(widen(arrays["params"], self.dtype), work["step"], work["chunks"],
                                        arrays["inputs"], arrays["targets"], arrays["h"], arrays["c"],
                                        dropout=work["dropout"], seed=work["seed"], out=grad_out)
        return Message("push", {"token": work["token"], "step": work["step"], "chunks": work["chunks"],
                                "loss": result.loss, "compute_s": result.compute_s},
                       {"grad": narrow(result.grad, wire), "h": result.h, "c": result.c})
