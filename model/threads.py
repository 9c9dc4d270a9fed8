"""How many threads numpy's BLAS may use. It reads its environment once, when numpy is first
imported, so entry points call one_blas_thread() before importing anything that imports numpy;
this module itself imports nothing heavy."""
import os

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_thread_env(threads: int, base: dict | None = None) -> dict:
    """An environment for a child process whose BLAS uses `threads` threads."""
    env = dict(os.environ if base is None else base)
    env.update({name: str(threads) for name in BLAS_THREAD_VARIABLES})
    return env


def one_blas_thread() -> None:
    """This process's BLAS uses one thread unless the user said otherwise: processes, not
    BLAS threads, share the cores among coordinator and workers."""
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
