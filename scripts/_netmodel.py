"""The scaling model of a step with streamed parameters and gradients (README, *On a real
network*): what the coordinator's link, or a relay chain, costs a step, given what one worker
computes."""
from __future__ import annotations

# Layer 0's forward and backward passes as shares of a worker's compute, timed with the
# streaming hooks of model/lstm.py on the default model: 16-20 % and 20-25 % for 4 to 25 chunks.
LAYER0_FORWARD_SHARE = 0.17
LAYER0_BACKWARD_SHARE = 0.22


def step_s(workers: int, link_bytes_per_s: float, wire_bytes: float, compute_s: float, update_s: float,
           layer0_share: float, piece_bytes: float | None = None) -> float:
    """Seconds per step, the transfers overlapped with compute as far as the pieces allow.

    wire_bytes: the parameter vector on the wire; layer0_share: layer 0's share of it.
    piece_bytes None: every worker gets its parameters from the coordinator and sends it its
    gradient (N copies through the coordinator's link); else a relay chain carries them in
    pieces of that size (one copy per link, plus a piece's time per hop)."""
    def carried_s(size: float) -> float:        # until `size` bytes reached every worker, or came back
        if piece_bytes is None:
            return workers * size / link_bytes_per_s
        return (size + (workers - 1) * piece_bytes) / link_bytes_per_s

    layer0_s, all_s = carried_s(wire_bytes * layer0_share), carried_s(wire_bytes)
    forward0_s, backward0_s = LAYER0_FORWARD_SHARE * compute_s, LAYER0_BACKWARD_SHARE * compute_s
    computed = max(layer0_s + forward0_s, all_s) + compute_s - forward0_s
    top_in = computed - backward0_s + carried_s(wire_bytes * (1 - layer0_share))   # while layer 0's backward runs
    return max(computed, top_in) + layer0_s + update_s
