"""The worker's math as a plain object: a `work` message in, a `push` message out. No sockets."""
from __future__ import annotations

import time

import numpy as np

from model.params import ParamLayout
from model.config import Config
from model.recurrent import resolve_form
from model.training import ChunkGradients, dropout_masks
from protocol import Message


class WorkerCompute:
    def __init__(self, config: dict, vocab: str):
        self.config = Config.from_dict(config)
        if self.config.recurrent_form == "auto":     # a coordinator that does not resolve it
            self.config = self.config.replace(recurrent_form=resolve_form("auto"))
        self.layout = ParamLayout.for_model(len(vocab), config["layers"], config["hidden"])
        self.dtype = np.dtype(config["dtype"])
        self.gradients = ChunkGradients(self.layout, self.dtype, self.config.blocked_recurrence)
        self.dims = {"P": self.layout.total, "S": config["layers"], "W": config["hidden"],
                     "T": config["seq_len"], "float": self.dtype.str}

    def compute(self, work: Message, grad_out: np.ndarray | None = None) -> Message:
        """grad_out: a (P,) buffer to reuse for the gradient, or None for a fresh one."""
        started = time.perf_counter()
        arrays = work.arrays
        masks = dropout_masks(self.config, work["step"], work["chunks"], self.dtype)
        loss, grad, h_last, c_last = self.gradients.compute(
            arrays["params"], arrays["inputs"], arrays["targets"], arrays["h"], arrays["c"], masks, grad_out)
        return Message("push", {"token": work["token"], "step": work["step"], "chunks": work["chunks"],
                                "loss": loss, "compute_s": time.perf_counter() - started},
                       {"grad": grad, "h": h_last, "c": c_last})
