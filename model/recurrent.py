"""The per-time-step recurrent product h @ W_h (and dz @ W_h.T): few rows, a large fixed W.

OpenBLAS multiplies without packing its operands when M*N*K <= 1e6 (its "small matrix"
kernel, built for AVX-512 CPUs). A recurrent product has M = the chunks in a batch (12-25), and
packing the whole W_h on every time step dominates it. Cut into contiguous column blocks under
that size and issued as one stacked numpy matmul, the product avoids the packing; where the
BLAS has no such kernel (AVX2-only CPUs) the blocks are slower than one product (README,
Performance).

The two forms round differently, so the form is a run-level setting (Config.recurrent_form),
resolved once from the coordinator's CPU and used by every process of the run: the bits of a
run depend on its flags, its worker count and that recorded form, never on timing.
"""
from __future__ import annotations

import os

import numpy as np

SMALL_KERNEL_MNK = 1_000_000
BLOCK_WIDTHS = (32, 16)          # narrower blocks measured slower than one packed product
MIN_STEPS_FOR_BLOCKS = 16        # re-laying out W costs about one product; amortise it
MIN_WEIGHTS_FOR_BLOCKS = 1 << 18  # a smaller W packs cheaply
# OpenBLAS core types whose kernels include the unpacked small-matrix path
AVX512_CORETYPES = ("SKYLAKEX", "COOPERLAKE", "SAPPHIRERAPIDS")


def block_width(rows: int, K: int, N: int, steps: int) -> int:
    """The widest column block that OpenBLAS multiplies unpacked for this shape, or 0."""
    if steps < MIN_STEPS_FOR_BLOCKS or K * N < MIN_WEIGHTS_FOR_BLOCKS:
        return 0
    return next((w for w in BLOCK_WIDTHS if N % w == 0 and rows * w * K <= SMALL_KERNEL_MNK), 0)


def form_for_this_cpu() -> str:
    """'blocks' where OpenBLAS will run its AVX-512 kernels, else 'single'. A rule on the CPU's
    features (and an OPENBLAS_CORETYPE override), not a timing, so it cannot flip under load."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:          # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    coretype = os.environ.get("OPENBLAS_CORETYPE", "").upper()
    if coretype:
        return "blocks" if coretype in AVX512_CORETYPES else "single"
    return "blocks" if features.get("AVX512F") and features.get("AVX512BW") else "single"


def resolve_form(asked: str, recorded: str | None = None) -> str:
    """The form a run uses: what was asked for, else what its checkpoint recorded, else the
    rule for this CPU."""
    if asked != "auto":
        return asked
    if recorded and recorded != "auto":
        return recorded
    return form_for_this_cpu()


class RecurrentProduct:
    """out = rows @ W for one W and many (M, K) row batches. With blocked=True, and a shape for
    which block_width allows it: one stacked matmul over contiguous (K, width) column blocks of
    W, written straight into out's columns. width forces a block width (0 = one product)."""

    def __init__(self, W: np.ndarray, rows: int, steps: int, blocked: bool = False,
                 width: int | None = None):
        K, N = W.shape
        if width is None:
            width = block_width(rows, K, N, steps) if blocked else 0
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
