"""The scaling model of a step with streamed parameters and gradients (README, *On a real
network*): what the coordinator's link, or a relay chain, costs a step, given what one worker
computes."""
from __future__ import annotations

# Layer 0's forward and backward passes as shares of a worker's compute, timed with the
# streaming hooks of model/lstm.py on the default model: 16-20 % and 20-25 % for 4 to 25 chunks.
LAYER0_FORWARD_SHARE = 0.17
LAYER0_BACKWARD_SHARE = 0.22
# What checking a relayed piece costs (SPEC.md 4.5): SHA-256 or HMAC-SHA256 of its bytes, 0.68-0.70 ms
# per MiB on one idle core of the 2-core AMD EPYC (Zen 1); a hop checks each parameter piece once
# before it forwards it, and each sum twice (the MAC in, the MAC out).
CHECK_S_PER_BYTE = 0.69e-3 / 2 ** 20


def step_s(workers: int, link_bytes_per_s: float, wire_bytes: float, compute_s: float, update_s: float,
           layer0_share: float, piece_bytes: float | None = None, check_s_per_byte: float = CHECK_S_PER_BYTE,
           back_bytes: float | None = None) -> float:
    """Seconds per step, the transfers overlapped with compute as far as the pieces allow.

    wire_bytes: the parameter vector on the wire; layer0_share: layer 0's share of it;
    back_bytes: the gradient (or a chain's sum) on its way back, if not wire_bytes (a narrow
    wire's chain sums in the run's dtype: twice as many).
    piece_bytes None: every worker gets its parameters from the coordinator and sends it its
    gradient (N copies through the coordinator's link); else a relay chain carries them in
    pieces of that size (one copy per link; out, a piece's time and its check per hop)."""
    hops = workers - 1

    def out_s(size: float) -> float:        # until `size` bytes reached the last worker
        if piece_bytes is None:
            return workers * size / link_bytes_per_s
        return (size + hops * piece_bytes) / link_bytes_per_s + hops * piece_bytes * check_s_per_byte

    def back_s(size: float) -> float:       # from the last worker's pieces to the coordinator
        if piece_bytes is None:
            return workers * size / link_bytes_per_s
        # the last worker got its parameters a hop later than the one before it, which finished
        # a hop sooner: the sum passes each hop as that worker's own pieces become final, and only
        # a sum's second check per hop (the MAC in and out, against one digest out) is not hidden
        return size / link_bytes_per_s + hops * piece_bytes * check_s_per_byte

    back_bytes = wire_bytes if back_bytes is None else back_bytes
    layer0_s, all_s = out_s(wire_bytes * layer0_share), out_s(wire_bytes)
    forward0_s, backward0_s = LAYER0_FORWARD_SHARE * compute_s, LAYER0_BACKWARD_SHARE * compute_s
    computed = max(layer0_s + forward0_s, all_s) + compute_s - forward0_s
    top_in = computed - backward0_s + back_s(back_bytes * (1 - layer0_share))   # while layer 0's backward runs
    return max(computed, top_in) + back_s(back_bytes * layer0_share) + update_s
