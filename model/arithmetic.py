"""What fixes the bits of this process's results: the project's math, numpy, and the BLAS kernel
numpy's OpenBLAS picked for this CPU (or was told to pick with OPENBLAS_CORETYPE). Two processes
that describe themselves alike compute bit-identical gradients for the same work; across
descriptions results agree only to rounding (protocol/SPEC.md 5.7 audits on this)."""
from __future__ import annotations

import ctypes
import functools

import numpy as np

MATH_VERSION = "charlstm-numpy/1"       # bump whenever model/lstm.py's operations or their order change
CORENAME_SYMBOLS = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename")


def blas_kernel() -> str:
    """The name of the BLAS kernel in use ("Haswell", "Zen", ...), or "unknown"."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:
        return "unknown"
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in CORENAME_SYMBOLS:
            function = getattr(library, symbol, None)
            if function is not None:
                function.restype = ctypes.c_char_p
                return (function() or b"unknown").decode("ascii", "replace").strip()
    return "unknown"


@functools.lru_cache(maxsize=1)
def arithmetic() -> str:
    """This process's arithmetic, as `register` declares it (SPEC.md 4)."""
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return f"{MATH_VERSION} numpy/{np.__version__} {blas.get('name', 'blas')}/{blas.get('version', '?')} " \
           f"kernel/{blas_kernel()}"
