"""LSTM forward and backward over one TBPTT window, for a batch of chunks at once.

Arrays are time-major: T steps, B chunks, H hidden units, V vocabulary, L layers.
Per layer: z = x @ W_x + h @ W_h + b, gates in the order i, f, g, o (PyTorch's);
i, f, o = sigmoid, g = tanh; c' = f*c + i*g; h' = o*tanh(c'). Head: logits = h_top @ W + b.

Speed: the input projection of a whole window is one gather (layer 0, one-hot input) or
one matrix product (layers above) before the time loop; the four gates are one product
with W_h per step (recurrent.py cuts it for speed); weight gradients are single
large products after the loop; the time loops write into preallocated buffers with out=
so they make no temporaries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .recurrent import RecurrentProduct


def sigmoid_(x: np.ndarray) -> None:
    """In-place logistic sigmoid through tanh: no overflow, one transcendental."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5


@dataclass
class LayerCache:
    gates: np.ndarray       # (T, B, 4H) activated i, f, g, o
    cells: np.ndarray       # (T+1, B, H) c_0 .. c_T
    tanh_cells: np.ndarray  # (T, B, H) tanh(c_1) .. tanh(c_T)
    hiddens: np.ndarray     # (T+1, B, H) h_0 .. h_T


def _check_inputs(params: dict, inputs: np.ndarray, h0: np.ndarray, c0: np.ndarray) -> None:
    layers = sum(1 for name in params if name.endswith(".W_h"))
    hidden = params["lstm0.W_h"].shape[0]
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be (B, T), got shape {inputs.shape}")
    expected = (layers, inputs.shape[0], hidden)
    if h0.shape != expected or c0.shape != expected:
        raise ValueError(f"state must be (L, B, H) = {expected}, got h {h0.shape}, c {c0.shape}")
    vocab = params["head.b"].shape[0]
    if inputs.size and (inputs.min() < 0 or inputs.max() >= vocab):
        raise ValueError(f"input indices must lie in 0..{vocab - 1}")


def _layer_forward(Z: np.ndarray, W_h: np.ndarray, h0: np.ndarray, c0: np.ndarray,
                   blocked: bool) -> LayerCache:
    """Z (T, B, 4H) holds the input projection plus bias; it becomes the activated gates."""
    T, B, H4 = Z.shape
    H = H4 // 4
    hiddens = np.empty((T + 1, B, H), dtype=Z.dtype)
    cells = np.empty((T + 1, B, H), dtype=Z.dtype)
    tanh_cells = np.empty((T, B, H), dtype=Z.dtype)
    hiddens[0], cells[0] = h0, c0
    recurrent = np.empty((B, H4), dtype=Z.dtype)
    input_times_cell = np.empty((B, H), dtype=Z.dtype)
    recurrent_product = RecurrentProduct(W_h, B, T, blocked)
    for t in range(T):
        z = Z[t]                                            # (B, 4H)
        recurrent_product(hiddens[t], recurrent)
        z += recurrent
        sigmoid_(z[:, :2 * H])                              # i, f
        np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])   # g
        sigmoid_(z[:, 3 * H:])                              # o
        np.multiply(z[:, H:2 * H], cells[t], out=cells[t + 1])
        np.multiply(z[:, :H], z[:, 2 * H:3 * H], out=input_times_cell)
        cells[t + 1] += input_times_cell
        np.tanh(cells[t + 1], out=tanh_cells[t])
        np.multiply(z[:, 3 * H:], tanh_cells[t], out=hiddens[t + 1])
    return LayerCache(Z, cells, tanh_cells, hiddens)


def _layer_backward(cache: LayerCache, W_h: np.ndarray, dH: np.ndarray,
                    dh_last: np.ndarray, dc_last: np.ndarray, blocked: bool):
    """dH (T, B, H): loss gradient w.r.t. h_1..h_T from above. Returns dZ (T, B, 4H), dh_0, dc_0."""
    gates, cells, tanh_cells = cache.gates, cache.cells, cache.tanh_cells
    T, B, H4 = gates.shape
    H = H4 // 4
    dZ = np.empty_like(gates)
    dh = np.empty((B, H), dtype=gates.dtype)
    dh_recurrent = dh_last.astype(gates.dtype, copy=True)
    dc = dc_last.astype(gates.dtype, copy=True)
    scratch = np.empty((B, H), dtype=gates.dtype)
    slope = np.empty((B, H4), dtype=gates.dtype)
    recurrent_product = RecurrentProduct(W_h.T, B, T, blocked)      # (4H, H)
    for t in range(T - 1, -1, -1):
        gates_t, dz = gates[t], dZ[t]                                # (B, 4H) each
        i, f, g, o = gates_t[:, :H], gates_t[:, H:2 * H], gates_t[:, 2 * H:3 * H], gates_t[:, 3 * H:]
        np.add(dH[t], dh_recurrent, out=dh)
        np.multiply(dh, tanh_cells[t], out=dz[:, 3 * H:])           # d o
        np.multiply(tanh_cells[t], tanh_cells[t], out=scratch)       # dc += dh*o*(1 - tanh^2)
        np.subtract(1, scratch, out=scratch)
        scratch *= o
        scratch *= dh
        dc += scratch
        np.multiply(dc, g, out=dz[:, :H])                            # d i
        np.multiply(dc, cells[t], out=dz[:, H:2 * H])                # d f
        np.multiply(dc, i, out=dz[:, 2 * H:3 * H])                   # d g
        dc *= f                                                      # dc_{t-1}
        np.subtract(1, gates_t, out=slope)                           # sigmoid' = s(1-s)
        slope *= gates_t
        np.multiply(g, g, out=slope[:, 2 * H:3 * H])                 # tanh' = 1 - g^2
        np.subtract(1, slope[:, 2 * H:3 * H], out=slope[:, 2 * H:3 * H])
        dz *= slope
        recurrent_product(dz, dh_recurrent)
    return dZ, dh_recurrent, dc


def _layer_output(cache: LayerCache, masks, layer: int) -> np.ndarray:
    """h_1..h_T of a layer as the next layer (or the head) sees them: (T, B, H), dropped out
    with the layer's mask (already scaled by 1/(1-p)) when training with dropout."""
    hiddens = cache.hiddens[1:]
    return hiddens if masks is None else hiddens * masks[layer]


def forward(params: dict, inputs: np.ndarray, h0: np.ndarray, c0: np.ndarray, masks=None,
            blocked: bool = False, await_layer=None):
    """inputs (B, T) int; h0, c0 (L, B, H); masks None or (L, T, B, H) dropout multipliers;
    blocked: the recurrent products in column blocks (Config.recurrent_form); await_layer(l),
    when given, returns once layer l's parameters (for the top layer, the head's too) are in
    `params`: they may still be arriving while lower layers compute.
    Returns logits (T, B, V) and the layer caches."""
    _check_inputs(params, inputs, h0, c0)       # shapes only: no value of params is read
    layers = h0.shape[0]
    B, T = inputs.shape
    caches = []
    below = None
    for layer in range(layers):
        if await_layer is not None:
            await_layer(layer)
        W_x, W_h, b = (params[f"lstm{layer}.{n}"] for n in ("W_x", "W_h", "b"))
        if layer == 0:
            Z = W_x[inputs.T]                                        # (T, B, 4H) one-hot @ W_x
        else:
            Z = (_layer_output(below, masks, layer - 1).reshape(T * B, -1) @ W_x).reshape(T, B, -1)
        Z += b
        below = _layer_forward(Z, W_h, h0[layer], c0[layer], blocked)
        caches.append(below)
    H = h0.shape[2]
    logits = _layer_output(below, masks, layers - 1).reshape(T * B, H) @ params["head.W"]  # (T*B, V)
    logits += params["head.b"]
    return logits.reshape(T, B, -1), caches


def final_state(caches) -> tuple[np.ndarray, np.ndarray]:
    """(h_T, c_T) of every layer, (L, B, H) each."""
    return (np.stack([c.hiddens[-1] for c in caches]), np.stack([c.cells[-1] for c in caches]))


def cross_entropy(logits: np.ndarray, targets: np.ndarray):
    """Summed cross-entropy (float64, nats) of logits (T, B, V) against targets (B, T),
    and its gradient w.r.t. the logits (softmax minus one-hot)."""
    T, B, V = logits.shape
    flat = logits.reshape(T * B, V)
    rows = np.arange(T * B)
    target_flat = targets.T.reshape(-1)
    probs = flat - flat.max(axis=1, keepdims=True)
    target_logit = probs[rows, target_flat].astype(np.float64)   # log-softmax from the shifted logit:
    np.exp(probs, out=probs)                                     # no log(0) when exp underflows
    totals = probs.sum(axis=1, keepdims=True)
    log_likelihood = target_logit - np.log(totals[:, 0].astype(np.float64))
    probs /= totals
    probs[rows, target_flat] -= 1
    return -float(log_likelihood.sum()), probs.reshape(T, B, V)


def loss_and_grad(params: dict, grads: dict, inputs: np.ndarray, targets: np.ndarray,
                  h0: np.ndarray, c0: np.ndarray, masks=None, blocked: bool = False,
                  await_layer=None, layer_done=None):
    """Summed loss over all B*T predictions and its gradient, written into `grads` (views
    shaped like params). masks: None or (L, T, B, H) dropout multipliers on each layer's
    output; blocked and await_layer as in forward; layer_done(l), when given, is called as
    soon as layer l's gradient (for the top layer, the head's too) is final, top layer first.
    Returns (loss_sum, h_T, c_T, dh_0, dc_0)."""
    if targets.shape != inputs.shape:
        raise ValueError(f"targets {targets.shape} and inputs {inputs.shape} differ in shape")
    logits, caches = forward(params, inputs, h0, c0, masks, blocked, await_layer)
    loss_sum, dlogits = cross_entropy(logits, targets)
    T, B, V = dlogits.shape
    layers, _, H = h0.shape
    top = _layer_output(caches[-1], masks, layers - 1).reshape(T * B, H)
    dlogits = dlogits.reshape(T * B, V)
    np.matmul(top.T, dlogits, out=grads["head.W"])
    np.sum(dlogits, axis=0, out=grads["head.b"])
    dH = (dlogits @ params["head.W"].T).reshape(T, B, H)
    if masks is not None:
        dH *= masks[layers - 1]
    dh0, dc0 = np.empty_like(h0), np.empty_like(c0)
    for layer in range(layers - 1, -1, -1):
        cache = caches[layer]
        W_x = params[f"lstm{layer}.W_x"]
        dZ, dh0[layer], dc0[layer] = _layer_backward(
            cache, params[f"lstm{layer}.W_h"], dH, np.zeros((B, H), h0.dtype), np.zeros((B, H), h0.dtype),
            blocked)
        dZ_flat = dZ.reshape(T * B, 4 * H)
        np.matmul(cache.hiddens[:-1].reshape(T * B, H).T, dZ_flat, out=grads[f"lstm{layer}.W_h"])
        np.sum(dZ_flat, axis=0, out=grads[f"lstm{layer}.b"])
        if layer == 0:
            _scatter_rows(grads["lstm0.W_x"], inputs.T.reshape(-1), dZ_flat)
        else:
            below = _layer_output(caches[layer - 1], masks, layer - 1).reshape(T * B, H)
            np.matmul(below.T, dZ_flat, out=grads[f"lstm{layer}.W_x"])
            dH = (dZ_flat @ W_x.T).reshape(T, B, H)
            if masks is not None:
                dH *= masks[layer - 1]
        if layer_done is not None:
            layer_done(layer)
    h_last, c_last = final_state(caches)
    return loss_sum, h_last, c_last, dh0, dc0


def _scatter_rows(out: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """out[r] = sum of values[k] with rows[k] == r: the one-hot input's W_x gradient, as one
    (V, T*B) @ (T*B, 4H) product, which measured faster than sort + add.reduceat."""
    onehot = np.zeros((rows.size, out.shape[0]), dtype=values.dtype)
    onehot[np.arange(rows.size), rows] = 1
    np.matmul(onehot.T, values, out=out)
