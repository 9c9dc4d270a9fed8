"""Using a trained model: sampling, evaluation over a text, per-character activations."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from . import lstm
from .corpus import encode
from .params import ParamLayout


class Model:
    """Parameters plus vocabulary, ready for inference."""

    def __init__(self, meta: dict, params: np.ndarray):
        self.meta = meta
        self.vocab: str = meta["vocab"]
        self.layers: int = meta["layers"]
        self.hidden: int = meta["hidden"]
        self.layout = ParamLayout.for_model(len(self.vocab), self.layers, self.hidden)
        self.params = self.layout.views(params)
        self.dtype = params.dtype

    def zero_state(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.layers, batch, self.hidden)
        return np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)

    def run(self, indices: np.ndarray, state):
        """Feeds a (T,) index sequence with batch 1; returns logits (T, V), caches, new state."""
        logits, caches = lstm.forward(self.params, indices[None, :], *state)
        return logits[:, 0, :], caches, lstm.final_state(caches)


def sample(model: Model, length: int, prime: str = "\n", temperature: float = 1.0,
           top_k: int = 0, seed: int = 0) -> Iterator[str]:
    """Yields `length` characters, one at a time, continuing the prime."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    if not prime:
        raise ValueError("the prime must have at least one character")
    rng = np.random.default_rng(seed)
    indices = encode(prime, model.vocab)
    logits, _, state = model.run(indices, model.zero_state())
    last = logits[-1].astype(np.float64)
    for _ in range(length):
        scaled = last / temperature
        if 0 < top_k < scaled.size:
            cutoff = np.partition(scaled, -top_k)[-top_k]
            scaled = np.where(scaled >= cutoff, scaled, -np.inf)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        index = int(rng.choice(probs.size, p=probs))
        yield model.vocab[index]
        logits, _, state = model.run(np.array([index], dtype=np.int32), state)
        last = logits[-1].astype(np.float64)


def evaluate(model: Model, text: str, window: int = 1000, on_progress=None) -> dict:
    """Mean cross-entropy predicting each next character of text, state carried from zero.
    on_progress(done, total, nats so far), when given, is called after each window."""
    indices = encode(text, model.vocab)
    if indices.size < 2:
        raise ValueError("the text needs at least two characters to predict one")
    state = model.zero_state()
    total = 0.0
    for start in range(0, indices.size - 1, window):
        inputs = indices[start:min(start + window, indices.size - 1)]
        targets = indices[start + 1:start + 1 + inputs.size]
        logits, caches = lstm.forward(model.params, inputs[None, :], *state)
        loss_sum, _ = lstm.cross_entropy(logits, targets[None, :])
        total += loss_sum
        state = lstm.final_state(caches)
        if on_progress is not None:
            done = start + inputs.size
            on_progress(done, indices.size - 1, total / done)
    chars = int(indices.size - 1)
    nats = total / chars
    return {"nats_per_char": nats, "bits_per_char": nats / math.log(2), "chars": chars}


QUANTITIES = ("h", "c", "i", "f", "g", "o")
GATES = ("i", "f", "g", "o")


def _quantity(caches, name: str, hidden: int) -> np.ndarray:
    """(L, T, H) of one quantity from a batch-1 forward pass's caches."""
    if name == "h":
        return np.stack([c.hiddens[1:, 0] for c in caches])
    if name == "c":
        return np.stack([c.cells[1:, 0] for c in caches])
    k = GATES.index(name)
    return np.stack([c.gates[:, 0, k * hidden:(k + 1) * hidden] for c in caches])


def activations(model: Model, text: str) -> dict:
    """Runs text from a zero state. Returns {"h", "c", "i", "f", "g", "o": (L, T, H) arrays,
    "probs": (T, V) next-character probabilities after each character}. Memory grows with
    the text: for long texts use stream_activations."""
    indices = encode(text, model.vocab)
    logits, caches, _ = model.run(indices, model.zero_state())
    out = {name: _quantity(caches, name, model.hidden) for name in QUANTITIES}
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    out["probs"] = shifted / shifted.sum(axis=1, keepdims=True)
    return out


def stream_activations(model: Model, text: str, quantity: str, window: int = 4096):
    """Yields (start, (L, w, H)) for one quantity, window by window with the state carried:
    the same values as activations(), in memory bounded by the window."""
    indices = encode(text, model.vocab)
    state = model.zero_state()
    for start in range(0, indices.size, window):
        _, caches, state = model.run(indices[start:start + window], state)
        yield start, _quantity(caches, quantity, model.hidden)
