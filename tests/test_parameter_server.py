"""ParameterServer and WorkerCompute as plain objects: no sockets."""
import numpy as np
import pytest

from coordinator.server import ParameterServer, partition
from model.config import Config
from model.corpus import make_corpus
from model.optim import RMSprop
from model.step import Gathered, apply_step
from model.training import Contribution, new_state
from protocol import Message
from helpers import answer, contribution_of, generated_text, local_steps
from worker.compute import WorkerCompute


def setup(chunks=5):
    corpus, config = make_corpus(generated_text(4000), Config(layers=2, hidden=8, chunks=chunks, seq_len=10,
                                                              dtype="float64"))
    return corpus, config, ParameterServer(new_state(config, corpus), corpus, liveness_s=5.0)


def one_worker_step(**config_changes):
    """A server with one registered worker and the step it was handed, and that worker's
    math (built from the config before config_changes, as a worker's own config may differ)."""
    corpus, config, server = setup()
    server.state.config = config.replace(**config_changes)
    computer = WorkerCompute(config.to_dict(), corpus.vocab)
    server.register(b"w", "w", 0.0)
    return config, server, computer, server.start_step()[0]


def worker_answer(server, item, computer, grad_out=None, **changes) -> list[Message]:
    """The server's work for item, computed: `grad`s, then `push`."""
    _, grads, push = answer(server, item, computer, grad_out, **changes)
    return grads + [push]


def whole_gradient(messages) -> np.ndarray:
    pieces = sorted((m for m in messages if m.cmd == "grad"), key=lambda m: m["piece"])
    return np.concatenate([m.arrays["grad"] for m in pieces])


def compute_push(server, item, computer):
    """What the coordinator makes of a worker's answer: the pieces kept, the push's contribution."""
    *pieces, push = worker_answer(server, item, computer)
    for piece in pieces:        # kept only if item is still that token's work in flight
        server.accept_piece(item.token, item.step, item.group, piece["piece"], piece.arrays["grad"])
    return contribution_of(push)


def test_partition_is_even_and_contiguous():
    assert partition(25, 2) == [tuple(range(13)), tuple(range(13, 25))]
    assert [len(g) for g in partition(10, 3)] == [4, 3, 3]
    assert partition(2, 5) == [(0,), (1,)]


def test_workers_compute_the_same_step_as_the_single_process_path():
    corpus, config, server = setup()
    reference = new_state(config, corpus)
    optimizer = RMSprop(server.state.square_avg, config.rho, config.eps, config.clip,
                        weight_decay=config.weight_decay)
    computer = WorkerCompute(config.to_dict(), corpus.vocab)
    tokens = [server.register(bytes([k]), f"w{k}", 0.0) for k in range(3)]
    for _ in range(3):
        items = server.start_step()
        assert sorted(i.token for i in items) == sorted(tokens)
        for item in reversed(items):                 # arrival order must not matter
            assert server.accept_push(item.token, item.step, item.group,
                                      compute_push(server, item, computer)) == ("accepted", None)
        collected = server.collect()
        apply_step(server.state, optimizer, Gathered(collected.contributions, collected.gradients, {}),
                   server.state.params.copy())
        local_steps(reference, corpus)
    np.testing.assert_allclose(server.state.params, reference.params, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(server.state.chunk_h, reference.chunk_h, rtol=1e-10, atol=1e-13)


def test_duplicates_stale_steps_and_foreign_chunks_change_nothing():
    corpus, config, server = setup()
    computer = WorkerCompute(config.to_dict(), corpus.vocab)
    a, b = server.register(b"a", "a", 0.0), server.register(b"b", "b", 0.0)
    items = {i.token: i for i in server.start_step()}
    contribution = compute_push(server, items[a], computer)
    assert server.accept_push(a, 0, items[a].group, contribution) == ("accepted", None)
    assert server.accept_push(a, 0, items[a].group, contribution) == ("duplicate", None)
    status, reason = server.accept_push(a, 0, items[b].group, contribution)
    assert status == "refused" and "not assigned" in reason
    status, reason = server.accept_push(a, 5, items[a].group, contribution)
    assert status == "stale" and "not the step in flight" in reason
    assert server.accept_push(12345, 0, items[a].group, contribution)[0] == "stale"
    assert len(server.in_flight.received) == 1


def test_a_dead_worker_s_chunks_move_whole_and_its_token_is_fenced():
    corpus, config, server = setup()
    computer = WorkerCompute(config.to_dict(), corpus.vocab)
    a, b = server.register(b"a", "a", 0.0), server.register(b"b", "b", 0.0)
    items = {i.token: i for i in server.start_step()}
    server.roster.heard_from(a, 4.0)
    dead, moved = server.reap(6.0)
    assert dead == [b] and [(m.token, m.group) for m in moved] == [(a, items[b].group)]
    late = compute_push(server, items[b], computer)
    assert server.accept_push(b, 0, items[b].group, late)[0] == "stale"
    for item in (items[a], moved[0]):
        assert server.accept_push(a, 0, item.group, compute_push(server, item, computer))[0] == "accepted"
    assert server.in_flight.complete
    assert sorted(server.collect().contributions) == sorted([items[a].group, moved[0].group])
    assert server.in_flight is None


def test_a_joining_worker_gets_chunks_at_the_next_step():
    corpus, config, server = setup()
    computer = WorkerCompute(config.to_dict(), corpus.vocab)
    a = server.register(b"a", "a", 0.0)
    (item,) = server.start_step()
    b = server.register(b"b", "b", 0.0)
    assert server.start_step() == []                 # a step is in flight
    server.accept_push(a, 0, item.group, compute_push(server, item, computer))
    server.collect()
    assert {i.token for i in server.start_step()} == {a, b}


@pytest.mark.parametrize("form", ["step", "window"])
def test_dropout_masks_do_not_depend_on_the_partition(form):
    from model.masks import MaskSettings
    config = Config(layers=2, hidden=8, chunks=5, seq_len=10, dropout=0.3, dropout_form=form)
    shape = (config.layers, config.seq_len, config.hidden)

    def masks(step, chunks, dropout=config.dropout):
        return MaskSettings(config.seed, dropout, form).dropout_masks(step, chunks, shape, np.float64)
    whole = masks(4, range(5))
    parts = np.concatenate([masks(4, [0, 1]), masks(4, [2, 3, 4])], axis=2)
    np.testing.assert_array_equal(whole, parts)
    assert set(np.unique(whole)) == {0.0, 1 / 0.7}
    assert not np.array_equal(whole, masks(5, range(5)))
    assert masks(4, range(5), dropout=0.0) is None


def test_learning_rate_decay_is_per_epoch_after_k():
    config = Config(lr=1e-3, lr_decay=0.5, lr_decay_after=2)
    assert [config.lr_at(e) for e in range(5)] == [1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4]
    assert Config().lr_at(100) == Config().lr


def test_a_worker_registering_again_mid_step_gets_its_groups_back():
    """Seen in a real run: a re-registration from the same socket while its group was in flight
    must leave that group dispatchable, or the step never completes."""
    corpus, config, server = setup()
    computer = WorkerCompute(config.to_dict(), corpus.vocab)
    a, b = server.register(b"a", "a", 0.0), server.register(b"b", "b", 0.0)
    items = {i.token: i for i in server.start_step()}
    b2 = server.register(b"b", "b", 0.0)
    moved = server.orphaned_work()
    assert len(moved) == 1 and moved[0].group == items[b].group and moved[0].token in (a, b2)
    for item in [items[a], *moved]:
        assert server.accept_push(item.token, 0, item.group, compute_push(server, item, computer))[0] == "accepted"
    assert server.in_flight.complete and b2 in server.workers and b not in server.workers


def test_a_reused_gradient_buffer_gives_the_same_push_as_a_fresh_one():
    _, server, computer, item = one_worker_step()
    fresh = worker_answer(server, item, computer)
    stale = np.full(computer.layout.total, np.nan)           # every element must be overwritten
    reused = worker_answer(server, item, computer, stale)
    assert all(np.shares_memory(m.arrays["grad"], stale) for m in reused if m.cmd == "grad")
    np.testing.assert_array_equal(whole_gradient(reused), whole_gradient(fresh))
    np.testing.assert_array_equal(whole_gradient(reused), stale)


def backup_setup(a_walls, b_walls):
    corpus, config, server = setup()
    a, b = server.register(b"a", "a", 0.0), server.register(b"b", "b", 0.0)
    server.workers[a].walls_per_chunk.extend(a_walls)
    server.workers[b].walls_per_chunk.extend(b_walls)
    items = {i.token: i for i in server.start_step()}
    for item in items.values():
        server.work_out(item, 0.0)
    return server, WorkerCompute(config.to_dict(), corpus.vocab), a, b, items


def test_a_slow_owner_s_group_is_copied_to_an_idle_worker_and_the_first_push_wins():
    server, computer, a, b, items = backup_setup([0.1] * 3, [1.0] * 3)
    assert server.backup_work(0.05) == []                 # a is still busy
    assert server.accept_push(a, 0, items[a].group, compute_push(server, items[a], computer), 0.3)[0] == "accepted"
    (copy,) = server.backup_work(0.3)                     # b usually needs 2 s for it; a, 0.2 s
    assert (copy.token, copy.group) == (a, items[b].group)
    assert server.backup_work(0.4) == []                  # one copy per group
    from_copy = compute_push(server, copy, computer)
    from_owner = compute_push(server, items[b], computer)
    np.testing.assert_array_equal(from_copy.grad, from_owner.grad)    # a copy computes the same bits
    assert server.accept_push(a, 0, copy.group, from_copy, 0.5) == ("accepted", None)
    assert server.accept_push(b, 0, items[b].group, from_owner, 2.0) == ("duplicate", None)
    server.collect()
    counts = server.take_backup_counts()
    assert (counts.issued, counts.won, counts.wasted) == (1, 1, 0)
    assert server.accept_push(b, 0, items[b].group, from_owner, 2.5) == ("duplicate", None)   # late again
    assert server.workers[b].usual_per_chunk() == 1.0


def test_equal_workers_get_no_copy_until_a_group_is_far_past_the_usual_time():
    server, computer, a, b, items = backup_setup([0.1] * 3, [0.1] * 3)
    server.accept_push(a, 0, items[a].group, compute_push(server, items[a], computer), 0.3)
    assert server.backup_work(0.3) == []                  # b's usual time: not late yet
    (copy,) = server.backup_work(0.45)                    # over LATE_FACTOR x 0.1 s x 2 chunks
    server.accept_push(b, 0, items[b].group, compute_push(server, items[b], computer), 0.5)
    assert server.accept_push(a, 0, copy.group, compute_push(server, copy, computer), 0.6)[0] == "duplicate"
    server.collect()
    counts = server.take_backup_counts()
    assert (counts.issued, counts.won, counts.wasted) == (1, 0, 1)


def test_dropout_masks_follow_the_spec_s_recipe_and_come_from_the_work_message():
    """SPEC.md 4.2, written out independently; and the worker uses the p and seed it is sent."""
    from model.masks import MaskSettings
    p, seed, step, chunks, shape = 0.3, 11, 6, [4, 1], (2, 10, 8)
    masks = MaskSettings(seed, p).dropout_masks(step, chunks, shape, np.float32)            # (L, T, B, H)
    locked = MaskSettings(seed, p, "window").dropout_masks(step, chunks, shape, np.float32)
    for column, chunk in enumerate(chunks):
        draws = np.random.default_rng([seed, step, chunk]).random(shape)
        expected = np.where(draws < 1 - p, 1.0 / (1 - p), 0.0).astype(np.float32)
        np.testing.assert_array_equal(masks[:, :, column, :], expected)
        draws = np.random.default_rng([seed, step, chunk]).random((shape[0], shape[2]))   # (L, H)
        for t in range(shape[1]):       # the window form: one (L, H) draw for every time step
            np.testing.assert_array_equal(locked[:, t, column, :],
                                          np.where(draws < 1 - p, 1.0 / (1 - p), 0.0).astype(np.float32))
    config, server, computer, item = one_worker_step(dropout=0.3)   # the worker's config says none
    with_dropout = whole_gradient(worker_answer(server, item, computer))
    assert not np.array_equal(with_dropout, whole_gradient(worker_answer(server, item, computer, dropout=0.0)))
    assert not np.array_equal(with_dropout, whole_gradient(worker_answer(server, item, computer,
                                                                         seed=config.seed + 1)))
    assert not np.array_equal(with_dropout, whole_gradient(worker_answer(server, item, computer,
                                                                         dropout_form="window")))


def test_an_owner_that_keeps_losing_is_routed_around_except_on_probe_steps():
    corpus, config, server = setup()
    a, b = server.register(b"a", "a", 0.0), server.register(b"b", "b", 0.0)
    server.workers[b].lost_in_a_row = 3
    server.state.step = 5
    items = server.start_step()
    groups = partition(config.chunks, 2)
    assert [(i.token, i.group) for i in items] == [(a, groups[0]), (a, groups[1])]   # a's own first
    assert server.in_flight.bypassed == {groups[1]} and server.in_flight.owner[groups[1]] == b
    moved = server.drop(a)                       # the copy's holder died: the owner computes its group
    assert sorted((i.token, i.group) for i in moved) == [(b, groups[0]), (b, groups[1])]
    server.in_flight = None
    server.register(b"a", "a", 0.0)
    server.state.step = 8                        # a probe step: the slow owner shows its pace again
    assert {i.token for i in server.start_step()} == set(server.workers)


def test_gradient_pieces_are_kept_only_for_work_in_flight_and_two_works_per_worker():
    corpus, config, server = setup()
    computer = WorkerCompute(config.to_dict(), corpus.vocab)
    a, b = server.register(b"a", "a", 0.0), server.register(b"b", "b", 0.0)
    items = {item.token: item for item in server.start_step()}
    *pieces, push = worker_answer(server, items[a], computer)
    piece = pieces[0]
    keep = lambda token, step, group: server.accept_piece(token, step, group, piece["piece"], piece.arrays["grad"])
    assert not keep(b, 0, items[a].group)                   # not b's work
    assert not keep(a, 1, items[a].group)                   # not the step in flight
    assert not keep(a, 0, (0, 1, 2, 3, 4))                  # not a group of this step
    assert keep(a, 0, items[a].group)
    contribution = contribution_of(push)
    status, reason = server.accept_push(a, 0, items[a].group, contribution)
    assert status == "refused" and "every piece" in reason     # the other piece never came
    for piece in pieces:
        assert server.accept_piece(a, 0, items[a].group, piece["piece"], piece.arrays["grad"])
    assert not server.accept_piece(a, 0, items[b].group, 0, pieces[-1].arrays["grad"])   # b's group
    server.in_flight.backup[items[b].group] = a             # a copy: a now holds b's group too
    assert server.accept_piece(a, 0, items[b].group, 0, pieces[-1].arrays["grad"])
    assert [h.group for h in server.assembler.held[a]] == [items[a].group, items[b].group]   # two at once
    server.assembler.keep(a, 0, (0, 1, 2, 3, 4), 0, pieces[-1].arrays["grad"])    # a third work's piece
    assert len(server.assembler.held[a]) == 2               # ...replaced the oldest
    assert server.assembler.take(a, 0, items[a].group) is None
    server.accept_piece(a, 0, items[b].group, 0, pieces[-1].arrays["grad"])
    server.register(b"a", "a again", 1.0)                   # the same socket, a new incarnation
    assert not server.assembler.held
    server.accept_piece(b, 0, items[b].group, 0, pieces[-1].arrays["grad"])
    server.drop(b)
    assert not server.assembler.held


def test_a_worker_computes_while_its_parameters_arrive_and_sends_the_top_piece_first():
    import threading
    import time
    import pytest
    from worker.compute import WorkAborted
    _, server, computer, item = one_worker_step()
    expected = worker_answer(server, item, computer)
    work = server.work_out(item).message
    incoming, out, pieces = computer.incoming(), [], server.param_pieces()
    assert incoming.put(1, pieces[1]) is not None           # out of order: refused
    incoming.put(0, pieces[0])
    copy = incoming.watch()                                  # a backup copy shares the parameters
    copy.abort()
    with pytest.raises(WorkAborted):                         # abandoned on its own...
        computer.compute(work, copy, out.append)
    out.clear()

    def late():                     # the second layer's piece arrives while the first computes
        time.sleep(0.2)
        incoming.put(1, pieces[1])
    feeder = threading.Thread(target=late)
    feeder.start()
    watch = incoming.watch()                                 # ...without the other computation
    computer.compute(work, watch, out.append)
    feeder.join()
    assert [(m.cmd, m.fields.get("piece")) for m in out] == [("grad", 1), ("grad", 0), ("push", None)]
    assert watch.waited_s > 0.1 and out[-1]["compute_s"] < expected[-1]["compute_s"] + 0.1
    np.testing.assert_array_equal(whole_gradient(out), whole_gradient(expected))
    ended = computer.incoming()
    ended.abort()                                            # the step is over: every watch gives up
    with pytest.raises(WorkAborted):
        computer.compute(work, ended.watch(), out.append)


def test_a_chained_group_is_copied_only_when_far_past_the_usual_time():
    """In a relay chain a member waits for hops its own history does not show (at 8+ workers a
    step 0 served through the coordinator made every later member look slow, and every chain
    broke): an idle worker's faster-looking copy is no reason to break the chain."""
    corpus, config, server = setup()
    a = server.register(b"a", "a", 0.0, relay="tcp://10.0.0.1:1")
    b = server.register(b"b", "b", 0.0, relay="tcp://10.0.0.2:1")
    for token, wall in ((a, 0.1), (b, 1.0)):
        server.workers[token].walls_per_chunk.extend([wall] * 3)
        server.workers[token].overheads.extend([0.01] * 3)
    server.state.step = 1                                  # step 0 is a probe step, without a chain
    items = {i.token: i for i in server.start_step()}
    assert server.in_flight.chain is not None and server.in_flight.chain.active
    for item in items.values():
        server.work_out(item, 0.0)
    server.accept_push(a, 1, items[a].group, Contribution(1.0, None, *[np.zeros((2, len(items[a].group), 8))] * 2,
                                                          0.1), 0.3)
    assert server.backup_work(0.3) == [] and server.in_flight.chain.active      # off the chain, a copy it would be
    (copy,) = server.backup_work(2.0 * 0.55 * len(items[b].group) + 0.01)        # LATE_FACTOR x the usual
    assert (copy.token, copy.group) == (a, items[b].group) and not server.in_flight.chain.active


def test_an_audit_copy_whose_worker_comes_to_hold_the_group_serves_the_step():
    """Found by a hostile registered peer that never computes: the backup copy of its group went
    to the worker already making that group's audit copy (the same work), whose result the audit
    kept, and the step waited forever. Now the result serves the step; the referee checks it."""
    from coordinator.audit import REFEREE, Auditor
    corpus, config, server = setup()
    silent, honest = server.register(b"s", "s", 0.0), server.register(b"h", "h", 0.0)
    items = {i.token: i for i in server.start_step()}
    flight = server.in_flight
    auditor = Auditor(server.state.layout.pieces, server.state.params.dtype, share=1.0)
    while True:                                       # the audit copies the silent worker's group to the honest one
        (copy,) = auditor.plan(flight, {silent: "a", honest: "a"})
        if copy.group == items[silent].group:
            break
    computer = WorkerCompute(config.to_dict(), corpus.vocab)
    *pieces, push = worker_answer(server, copy, computer)
    for piece in pieces[:2]:                          # some pieces reach the audit first
        assert auditor.takes(flight, honest, 0, copy.group)
        auditor.copy_piece(honest, 0, copy.group, piece["piece"], piece.arrays["grad"])
    flight.backup[copy.group] = honest                # then the silent owner's group is copied to it
    assert not auditor.takes(flight, honest, 0, copy.group)
    token, step, group, released, none = auditor.release(flight)
    assert (token, step, group, none) == (honest, 0, copy.group, None) and len(released) == 2
    assert auditor.current.copier is REFEREE and auditor.release(flight) is None
    for piece, array in released:
        server.accept_piece(token, step, group, piece, array)
    for piece in pieces[2:]:
        server.accept_piece(honest, 0, copy.group, piece["piece"], piece.arrays["grad"])
    assert server.accept_push(honest, 0, copy.group, contribution_of(push), 1.0)[0] == "accepted"
