"""The pieces the parameters and gradients travel in (protocol/SPEC.md 4.4): a run setting
(Config.piece_elements) that changes how many messages a step takes, never a bit of the result."""
import os

import numpy as np
import pytest
import zmq

import helpers
from model.config import Config
from model.params import MAX_PIECES, PIECE_ELEMENTS, ParamLayout
from protocol import Message
from worker.relay import Relay


def test_each_layer_span_is_cut_into_pieces_of_at_most_the_run_s_size():
    for limit in (PIECE_ELEMENTS, 1000, 64, 2):
        layout = ParamLayout.for_model(30, 2, 16, limit)
        sizes = [stop - start for start, stop in layout.pieces]
        assert max(sizes) <= limit and sum(sizes) == layout.total
        assert [layout.pieces[r[-1]][1] for r in map(layout.layer_pieces, range(2))] == \
            [stop for _, stop in layout.layer_spans]           # no piece crosses a span's end
    assert len(ParamLayout.for_model(30, 2, 16, 64).pieces) == 88


def test_a_cut_into_too_many_pieces_or_of_no_size_is_refused():
    with pytest.raises(ValueError, match="raise piece_elements"):
        ParamLayout.for_model(65, 2, 512, 64).pieces       # 3.4 M elements in 53,000 pieces
    assert len(ParamLayout.for_model(65, 2, 512, 1 << 12).pieces) <= MAX_PIECES
    with pytest.raises(ValueError, match="piece_elements"):
        Config(piece_elements=0)
    assert Config().piece_elements == PIECE_ELEMENTS


def test_a_relay_peer_still_connecting_is_queued_a_step_of_pieces_then_sends_to_it_drop(tmp_path):
    """A chain forwards a step's pieces to a peer that may not be reading yet: its queue holds
    them all (the default model's 14 pieces fit 32; 103 pieces of 2^15 did not), no more."""
    context = zmq.Context()
    dropped = []
    relay = Relay(context, "ipc:///nowhere", offer=False, max_message_bytes=1 << 20, drop_log=dropped.append)
    try:
        pieces = 103
        relay.size_for(pieces)
        nobody = f"ipc://{tmp_path}/nobody-listens"
        sent = [relay.send(nobody, Message("params", {"step": 2, "piece": k % pieces},
                                           {"params": np.zeros(4, np.float32)}))
                for k in range(relay.queue + 3)]
        assert None not in sent[:2 * pieces]
        assert sent[relay.queue:] == [None] * 3 and len(dropped) == 3
        assert "does not take params for step 2" in dropped[0]
    finally:
        relay.close()
        context.term()


@pytest.mark.timeout(240)
def test_a_chain_of_many_small_pieces_ends_on_the_bits_of_the_default_pieces(corpus, tmp_path):
    """Real processes on loopback: 3 workers relaying the parameters and sums in 88 pieces of 64
    elements, against the same run with its workers sending everything direct in 2 pieces."""
    small, default = str(tmp_path / "small"), str(tmp_path / "default")
    for save_dir, coordinator_flags, worker_flags in ((small, ("--piece-elements", "64"), ()),
                                                      (default, (), ("--no-relay",))):
        helpers.run_cluster(corpus, save_dir, 6, 3, ("--chunks", "7", *coordinator_flags), worker_flags)
    # a late group (the tiny model computes in milliseconds, so noise can make one) ends a chain
    # and the next 2 steps go without; the bits do not depend on it
    assert sum(m["relayed"] for m in helpers.metrics(small)) >= 2
    logs = "".join(open(os.path.join(small, f"worker{k}.log")).read() for k in range(3))
    assert "does not take" not in logs and "arrived when piece" not in logs
    assert np.array_equal(helpers.params_of(small), helpers.params_of(default))
