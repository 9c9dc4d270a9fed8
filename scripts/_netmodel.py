"""The scaling model of a step with streamed parameters and gradients (README, *On a real
network*): what the coordinator's one link costs a step, given what one worker computes."""
from __future__ import annotations

# Layer 0's forward and backward passes as shares of a worker's compute, timed with the
# streaming hooks of model/lstm.py on the default model: 16-20 % and 20-25 % for 4 to 25 chunks.
LAYER0_FORWARD_SHARE = 0.17
LAYER0_BACKWARD_SHARE = 0.22


def step_s(workers: int, link_bytes_per_s: float, wire_bytes: float, compute_s: float, update_s: float,
           layer0_share: float) -> float:
    """Seconds per step: N copies of the parameters out and N gradients in through the
    coordinator's link, overlapped with compute as far as the pieces allow.

    wire_bytes: the parameter vector on the wire; layer0_share: layer 0's piece's share of it."""
    first_piece_s = workers * wire_bytes * layer0_share / link_bytes_per_s     # layer 0's pieces, to every worker
    all_pieces_s = workers * wire_bytes / link_bytes_per_s
    forward0_s, backward0_s = LAYER0_FORWARD_SHARE * compute_s, LAYER0_BACKWARD_SHARE * compute_s
    computed = max(first_piece_s + forward0_s, all_pieces_s) + compute_s - forward0_s
    top_pieces_in = computed - backward0_s + all_pieces_s - first_piece_s     # sent while layer 0's backward runs
    return max(computed, top_pieces_in) + first_piece_s + update_s
