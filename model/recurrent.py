"""The per-time-step recurrent product h @ W_h (and dz @ W_h.T): few rows, a large fixed W.

OpenBLAS multiplies without packing its operands when M*N*K <= 1e6 (its "small matrix"
kernel, built for AVX-512 CPUs). A recurrent product has M = the chunks in a batch (12-25), and
packing the 4 MB W_h on every time step dominates it. Cut into contiguous column blocks under
that size and issued as one stacked numpy matmul, the same product ran 1.7x (forward) and 2.7x
(backward) faster at M=13 on our machine. Where the BLAS has no such kernel (OpenBLAS on
AVX2-only CPUs) the blocks are 10-20 % slower, so each process times both forms once per
shape and keeps the faster.
"""
from __future__ import annotations

import time

import numpy as np

SMALL_KERNEL_MNK = 1_000_000
BLOCK_WIDTHS = (32, 16)          # narrower blocks measured slower than one packed product
MIN_STEPS_FOR_BLOCKS = 16        # re-laying out W costs about one product; amortise it
MIN_WEIGHTS_FOR_BLOCKS = 1 << 18  # a smaller W packs cheaply (and timing it would be noise)
REQUIRED_SPEEDUP = 1.15          # a margin, so the choice does not flip between runs

_chosen_widths: dict[tuple, int] = {}


def block_width(rows: int, K: int, N: int, steps: int) -> int:
    """The widest column block that OpenBLAS multiplies unpacked for this shape, or 0."""
    if steps < MIN_STEPS_FOR_BLOCKS or K * N < MIN_WEIGHTS_FOR_BLOCKS:
        return 0
    return next((w for w in BLOCK_WIDTHS if N % w == 0 and rows * w * K <= SMALL_KERNEL_MNK), 0)


class RecurrentProduct:
    """out = rows @ W for one W and many (M, K) row batches. With width > 0: one stacked matmul
    over contiguous (K, width) column blocks of W, written straight into out's columns.
    width=None chooses: blocks where block_width allows them and they measured faster here."""

    def __init__(self, W: np.ndarray, rows: int, steps: int, width: int | None = None):
        K, N = W.shape
        if width is None:
            width = _measured_width(W, rows, block_width(rows, K, N, steps))
        if width and N % width:
            raise ValueError(f"block width {width} does not divide the {N} columns of W")
        self.width = width
        if width:
            self.W = np.ascontiguousarray(W.reshape(K, N // width, width).transpose(1, 0, 2))
        else:
            self.W = np.ascontiguousarray(W)        # (K, N); a transposed view is slow

    def __call__(self, rows: np.ndarray, out: np.ndarray) -> None:
        if self.width:
            M, N = out.shape
            blocks = out.reshape(M, N // self.width, self.width).transpose(1, 0, 2)  # (N/w, M, w)
            np.matmul(rows, self.W, out=blocks)
        else:
            np.matmul(rows, self.W, out=out)


def _measured_width(W: np.ndarray, rows: int, candidate: int) -> int:
    if not candidate:
        return 0
    key = (rows, *W.shape, W.dtype.str, candidate)
    if key not in _chosen_widths:
        _chosen_widths[key] = candidate if _blocks_are_faster(W, rows, candidate) else 0
    return _chosen_widths[key]


def _blocks_are_faster(W: np.ndarray, rows: int, width: int, repeats: int = 5, calls: int = 4) -> bool:
    """Times both forms on this process's BLAS, interleaved so that load affects both alike."""
    K, N = W.shape
    x, out = np.ones((rows, K), W.dtype), np.empty((rows, N), W.dtype)
    forms = [RecurrentProduct(W, rows, 0, width=0), RecurrentProduct(W, rows, 0, width=width)]
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for k, product in enumerate(forms):
            started = time.perf_counter()
            for _ in range(calls):
                product(x, out)
            best[k] = min(best[k], time.perf_counter() - started)
    return best[1] * REQUIRED_SPEEDUP < best[0]
