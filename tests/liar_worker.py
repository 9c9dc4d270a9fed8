"""A registered worker that returns wrong numbers (for tests/test_audits.py): the project's own
worker with one lie planted where its gradients leave it, and honest in everything else, the
`sums` it reports included (it reports what it sent).

    python -m tests.liar_worker LIE [worker flags]

LIE: negate-sum (a mid-chain worker negates the sum it forwards), negate-sum-hidden (the same,
but its `sums` report the honest sum), add-1000 (adds 1000 x its own
gradient to the sum it forwards), flip-bit-50 (flips one bit of one piece it sends, every 50th
step), wrong-own (a direct worker negates its own gradient), sneaky (a mid-chain worker negates
the sum it forwards at steps 5-15, then adds 1000 x its own from step 20), mute (computes honestly, but never
answers a `direct`: an audit of its chain is never answered). With LIE_FROM_STEP=N in the environment
it is honest before step N."""
import os
import sys

from model.threads import one_blas_thread

one_blas_thread()

import numpy as np  # noqa: E402

from worker import __main__ as worker_main  # noqa: E402
from worker.chain import ChainSums  # noqa: E402

honest_grad = ChainSums._grad


def lying_grad(self, piece, array, prefix, to_relay=False):
    lie, step = LIE, self.names["step"]
    if step < int(os.environ.get("LIE_FROM_STEP", "0")):
        return honest_grad(self, piece, array, prefix, to_relay)
    forwarded = prefix and to_relay and self.sum_from          # a sum this mid-chain worker sends on
    if lie == "sneaky" and forwarded:
        lie = "negate-sum" if 5 <= step <= 15 else "add-1000" if step >= 20 else "honest"
    if lie in ("negate-sum", "negate-sum-hidden") and forwarded:
        if lie == "negate-sum-hidden":          # what `sums` reports stays the honest sum
            self.sent[piece], array = array, -array
        else:
            np.negative(array, out=array)
    elif lie == "add-1000" and forwarded:
        array += 1000 * self.own[piece].astype(array.dtype)
    elif lie == "flip-bit-50" and step % 50 == 0 and piece == 0 and step > 0:
        array = array.copy()
        array.view(np.uint32 if array.itemsize == 4 else np.uint64)[0] ^= 1 << 20
        if prefix:
            self.sent[piece] = array
    elif lie == "wrong-own" and not prefix:
        array = -array
    return honest_grad(self, piece, array, prefix, to_relay)


if __name__ == "__main__":
    LIE = sys.argv.pop(1)
    ChainSums._grad = lying_grad
    if LIE == "mute":
        ChainSums.go_direct = lambda self, pieces: []
    sys.exit(worker_main.main())
