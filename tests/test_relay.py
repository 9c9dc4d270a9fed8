"""Relay chains (protocol/SPEC.md 4.5): the parameters forwarded along the workers, the
gradients added up along them in chunk order. Plain objects first, then real processes."""
import os
import signal

import numpy as np
import pytest

import helpers
from coordinator.server import ParameterServer
from model.config import Config
from model.corpus import make_corpus
from model.training import Contribution, new_state
from model.wire import widen, wire_sum
from coordinator.chain import SendDirect, SendParams
from protocol import Message
from worker.chain import COORDINATOR, ChainSums
from worker.compute import WorkerCompute


def chain_server(workers=3, relays=True, **config_fields):
    corpus, config = make_corpus(helpers.generated_text(4000),
                                 Config(layers=2, hidden=8, chunks=7, seq_len=10, **config_fields))
    server = ParameterServer(new_state(config, corpus), corpus, liveness_s=5.0)
    tokens = [server.register(bytes([k]), f"w{k}", 0.0, f"tcp://10.0.0.{k}:4000" if relays else "")
              for k in range(workers)]
    for token in tokens:                    # each worker's own link timed on an earlier step
        server.workers[token].overheads.append(0.02)
    server.state.step = 1                   # step 0 (like every 32nd) goes without a chain
    return corpus, config, server, tokens


def answers(server, items, computer):
    """Every worker's own answer to its work: {group: (work, grad messages, push)}."""
    return {item.group: helpers.answer(server, item, computer) for item in items}


def run_chain(server, items, computer, dtype):
    """What the workers of a chain send the coordinator: each its push, the last its sums."""
    answered = answers(server, items, computer)
    sums = None
    for group in sorted(answered):
        work, grads, push = answered[group]
        chain = ChainSums(work, dtype, None)
        if sums is not None:
            for message in sums:
                assert chain.follows(message["chunks"])
        sent = [out for message in grads for out in chain.own_piece(message["piece"], message.arrays["grad"])]
        for message in sums or []:
            sent += chain.sum_before(message["piece"], message.arrays["grad"])
        assert all(m["prefix"] for _, m in sent) and len(sent) == len(grads)
        sums = [m for _, m in sent]
        last = [destination for destination, _ in sent]
    assert set(last) == {COORDINATOR}
    return answered, sums


def test_a_chain_plan_links_the_groups_in_ascending_order():
    _, _, server, tokens = chain_server()
    items = server.start_step()
    chain = server.in_flight.chain
    assert chain is not None and chain.groups == sorted(chain.groups)
    outs = [server.work_out(item) for item in sorted(items, key=lambda i: i.group)]
    fields = [out.message.fields for out in outs]
    assert [(f["params_to"], f["sum_from"], f["sum_to"]) for f in fields] == [
        ("tcp://10.0.0.1:4000", False, "tcp://10.0.0.1:4000"),
        ("tcp://10.0.0.2:4000", True, "tcp://10.0.0.2:4000"), ("", True, "")]
    assert [out.sends_params for out in outs] == [True, False, False]
    _, _, no_relay, _ = chain_server(relays=False)
    no_relay.start_step()
    assert no_relay.in_flight.chain is None
    corpus, config, curve, _ = chain_server()
    curve.chains.relaying = False           # a coordinator with CurveZMQ keys (SPEC.md 4.5)
    curve.start_step()
    assert curve.in_flight.chain is None


@pytest.mark.parametrize("dtype, wire, sums", [("float32", "exact", "run"), ("float64", "exact", "run"),
                                               ("float32", "bfloat16", "run"), ("float32", "bfloat16", "wire"),
                                               ("float64", "bfloat16", "wire"), ("float32", "float16", "wire")])
def test_the_chain_s_sum_is_bit_for_bit_the_coordinator_s(dtype, wire, sums):
    """The chain's sum against the coordinator's own sum of the same gradients sent direct; with
    sums on the wire, both round every partial sum (SPEC.md 4.5) and the sums travel narrow."""
    _, config, server, tokens = chain_server(dtype=dtype, wire_dtype=wire, chain_sums=sums)
    computer = WorkerCompute(config.to_dict(), server.state.vocab)
    items = server.start_step()
    answered, sums_sent = run_chain(server, items, computer, np.dtype(dtype))
    last_token = server.in_flight.chain.tokens[-1]
    for item in items:
        _, _, push = answered[item.group]
        status, _ = server.accept_push(item.token, 1, item.group,
                                       helpers.contribution_of(push), 1.0)
        assert status == "accepted"          # a chained push needs no gradient of its own
    assert not server.in_flight.complete
    for message in sums_sent:
        assert server.accept_piece(last_token, 1, tuple(message["chunks"]), message["piece"],
                                   message.arrays["grad"], prefix=True)
    assert server.in_flight.complete
    collected = server.collect()
    chained = collected.contributions
    direct = {}                              # the same gradients, each sent on its own
    for group, (_, grads, _) in answered.items():
        direct[group] = np.concatenate([widen(m.arrays["grad"], dtype) for m in sorted(grads, key=lambda m: m["piece"])])
    groups = sorted(chained)
    gradients = [direct[group] for group in groups]      # the coordinator's own order: ascending chunks
    expected = wire_sum(gradients, wire, server.state.layout.pieces) if sums == "wire" else sum(
        gradients[1:], gradients[0].copy())
    (total,) = collected.gradients
    assert total.dtype == np.dtype(dtype) and np.array_equal(total, expected)
    narrow_sums = sums == "wire" and wire != "exact"
    assert all((m.arrays["grad"].dtype.itemsize == 2) == narrow_sums for m in sums_sent)
    if narrow_sums:             # the rounding matters: a plain sum differs
        assert not np.array_equal(total, sum(gradients[1:], gradients[0].copy()))


def test_a_chain_is_abandoned_when_a_member_dies_and_the_step_still_completes():
    _, config, server, tokens = chain_server()
    computer = WorkerCompute(config.to_dict(), server.state.vocab)
    items = sorted(server.start_step(), key=lambda i: i.group)
    answered = answers(server, items, computer)
    first, middle, last = items
    _, _, push = answered[first.group]
    server.accept_push(first.token, 1, first.group,
                       helpers.contribution_of(push), 1.0)
    moved = server.drop(middle.token)                        # dies before its push
    orders = server.chain_watch.take_orders()
    assert SendDirect(first.token, first.group) in orders and SendParams(last.token) in orders
    assert [(m.token, m.group) for m in moved] and not server.in_flight.chain.active
    out = server.work_out(moved[0])
    assert out.message["sum_to"] == "" and out.sends_params
    for message in answered[first.group][1]:                 # the direct gradient, after its push
        assert server.accept_piece(first.token, 1, first.group, message["piece"], message.arrays["grad"])
    for item in (moved[0], last):
        _, grads, push = answered[item.group]
        for message in grads:
            server.accept_piece(item.token, 1, item.group, message["piece"], message.arrays["grad"])
        assert server.accept_push(item.token, 1, item.group,
                                  helpers.contribution_of(push),
                                  1.0)[0] == "accepted"
    assert server.in_flight.complete and all(c.grad is not None for c in server.collect().contributions.values())


def test_a_chain_whose_sum_is_overdue_is_abandoned_and_the_next_steps_go_without_one():
    _, config, server, tokens = chain_server(2)

    def finish_step():
        for group, token in list(server.in_flight.owner.items()):
            server.accept_push(token, server.state.step, group, Contribution(0.0, np.zeros(1), None, None, 0.0), 0.5)
        server.collect()
        server.state.step += 1
    for item in server.start_step():
        server.work_out(item, 0.0)
    for group, token in list(server.in_flight.owner.items()):
        server.accept_push(token, 1, group, Contribution(0.0, np.zeros(1), None, None, 0.0), 0.5)
    server.check_chain(1.0)
    assert server.in_flight.chain.active                     # within the grace
    server.check_chain(2.0)
    assert not server.in_flight.chain.active and len(server.chain_watch.take_orders()) == 2
    server.collect()
    server.state.step += 1
    for pause in (2, 4):                                     # while chains keep breaking: longer pauses
        chains = []
        while not chains or not chains[-1]:
            server.start_step()
            chains.append(server.in_flight.chain is not None)
            if chains[-1]:
                server.chain_watch.abandon(server.in_flight, server.workers, "a test breaks it")     # and it breaks again
            finish_step()
        assert chains == [False] * pause + [True]


def test_a_chain_s_sum_stands_for_its_groups_and_a_step_without_every_gradient_is_refused():
    from coordinator.chain import RelayChain
    from coordinator.step import StepInFlight
    from model.step import Gathered, apply_step
    total, own = np.ones(3), np.full(3, 2.0)
    flight = StepInFlight(0, {(0,): 1, (1,): 2, (2,): 3})
    flight.chain = RelayChain([(0,), (1,)], [1, 2], ["tcp://a:1", "tcp://b:1"], None, total=total)
    flight.received = {(0,): Contribution(0, None, None, None, 0), (1,): Contribution(0, None, None, None, 0),
                       (2,): Contribution(0, own, None, None, 0)}
    assert flight.complete and flight.gradients() == [total, own]
    flight.chain.total = None                                # no sum: the chained groups have nothing
    assert not flight.complete
    with pytest.raises(RuntimeError, match="incomplete"):
        apply_step(None, None, Gathered(flight.received, [None, own], {}), None)


def test_a_direct_order_sends_every_own_piece_to_the_coordinator_once():
    work = Message("work", {"token": 1, "step": 0, "chunks": [3, 4], "dropout": 0.0, "seed": 1, "wire": "<f4", "weight_drop": 0.0, "dropout_form": "step", "sum_wire": "<f4",
                            "params_to": "", "sum_from": True, "sum_to": "tcp://10.0.0.9:1", "params_digests": [],
                            "sum_key_in": "01" * 32, "sum_key_out": "02" * 32}, {})
    chain = ChainSums(work, np.float32, None)
    assert chain.own_piece(1, np.ones(2, np.float32)) == []          # waits for the sum before it
    assert chain.follows([1, 2]) and not chain.follows([0, 1])
    direct = chain.go_direct(2)
    assert [(d, m["piece"], m["prefix"]) for d, m in direct[:-1]] == [(COORDINATOR, 1, False)]
    sums = direct[-1][1]            # then what it received and sent on: nothing yet (SPEC.md 4)
    assert direct[-1][0] == COORDINATOR and (sums.cmd, sums["sum_in"], sums["sum_out"]) == ("sums", ["", ""], ["", ""])
    assert chain.sum_before(1, np.ones(2, np.float32)) == [] and chain.go_direct(2) == []
    assert [(d, m["prefix"]) for d, m in chain.own_piece(0, np.ones(2, np.float32))] == [(COORDINATOR, False)]


@pytest.mark.timeout(240)
def test_three_workers_relay_and_end_on_the_bits_of_workers_that_do_not(corpus, tmp_path):
    """Real processes on loopback: every step relayed, the model identical to a run whose
    workers send everything to the coordinator themselves; then a chain member is killed in
    the middle of the run and the result still equals the undisturbed one."""
    relayed, direct = str(tmp_path / "relayed"), str(tmp_path / "direct")
    for save_dir, flags in ((relayed, ()), (direct, ("--no-relay",))):
        helpers.run_cluster(corpus, save_dir, 6, 3, ("--chunks", "7"), flags)
    # the first steps may go without: a worker's first computation is slow, a late group ends a
    # chain (the tiny model computes in milliseconds), and the next 2 steps go without one
    assert [m["relayed"] for m in helpers.metrics(relayed)][3:] == [1] * 3
    assert [m["relayed"] for m in helpers.metrics(direct)] == [0] * 6
    assert np.array_equal(helpers.params_of(relayed), helpers.params_of(direct))

    killed = str(tmp_path / "killed")
    coordinator, endpoint = helpers.start_coordinator(corpus, killed, 40, "--chunks", "7", workers=3)
    pool = [helpers.spawn("worker", "--connect", endpoint, log_path=os.path.join(killed, f"worker{k}.log"))
            for k in range(3)]
    try:
        helpers.wait_for(lambda: any(m["relayed"] for m in helpers.metrics(killed)), 60, "a relayed step")
        pool[1].send_signal(signal.SIGKILL)                 # a chain member, maybe in the middle of a step
        assert coordinator.wait(120) == 0
    finally:
        helpers.stop_all(coordinator, *pool)
    lines = helpers.metrics(killed)
    assert lines[-1]["workers"] == 2 and lines[-1]["relayed"] == 1
    reference = str(tmp_path / "reference")
    helpers.train(corpus, reference, "--steps", 40, "--chunks", "7", "--workers", 0)
    assert helpers.relative(helpers.params_of(killed), helpers.params_of(reference)) < 1e-10


def test_a_worker_on_a_slow_link_stays_off_the_chain_and_the_sum_stays_exact():
    _, config, server, tokens = chain_server()
    slow = tokens[0]
    server.workers[slow].overheads[0] = 2.0           # its own link costs it 2 s a step
    computer = WorkerCompute(config.to_dict(), server.state.vocab)
    items = sorted(server.start_step(), key=lambda i: i.group)
    chain = server.in_flight.chain
    assert chain.tokens == tokens[1:] and items[-1].token == slow    # the chain is the first groups'
    out = server.work_out(items[-1])
    assert out.message["sum_to"] == "" and out.sends_params
    answered, sums = run_chain(server, items[:-1], computer, np.dtype(np.float32))
    for message in sums:
        server.accept_piece(chain.tokens[-1], 1, tuple(message["chunks"]), message["piece"],
                            message.arrays["grad"], prefix=True)
    answered.update(answers(server, items[-1:], computer))
    for message in answered[items[-1].group][1]:
        server.accept_piece(slow, 1, items[-1].group, message["piece"], message.arrays["grad"])
    for item in items:
        push = answered[item.group][2]
        assert server.accept_push(item.token, 1, item.group, helpers.contribution_of(push), 1.0)[0] == "accepted"
    collected = server.collect()
    contributions = collected.contributions
    own = {g: np.concatenate([m.arrays["grad"] for m in sorted(a[1], key=lambda m: m["piece"])])
           for g, a in answered.items()}
    groups = sorted(contributions)
    expected = own[groups[0]] + own[groups[1]]
    expected += own[groups[2]]
    total = collected.gradients
    assert len(total) == 2 and np.array_equal(total[0] + total[1], expected)


def test_a_chained_group_s_own_pieces_before_direct_are_refused_and_the_sum_still_stands():
    """SPEC.md 4.5: a last chain member that labels its sum `prefix: false` must not have it
    counted as its own group's gradient (it once corrupted the model without a log line)."""
    _, config, server, tokens = chain_server()
    computer = WorkerCompute(config.to_dict(), server.state.vocab)
    items = sorted(server.start_step(), key=lambda i: i.group)
    chain = server.in_flight.chain
    answered, sums = run_chain(server, items, computer, np.dtype(np.float32))
    last = items[-1]
    mislabelled = server.accept_piece(last.token, 1, last.group, sums[0]["piece"], sums[0].arrays["grad"], prefix=False)
    assert not mislabelled and "before `direct`" in mislabelled.refusal and not mislabelled.answer
    stranger = server.accept_piece(items[0].token, 1, items[0].group, 0, sums[0].arrays["grad"], prefix=True)
    assert not stranger and stranger.answer and "not the last" in stranger.refusal
    for message in sums:
        assert server.accept_piece(chain.tokens[-1], 1, last.group, message["piece"], message.arrays["grad"], prefix=True)
    for item in items:
        assert server.accept_push(item.token, 1, item.group, helpers.contribution_of(answered[item.group][2]),
                                  1.0)[0] == "accepted"
    assert server.collect().relayed


def test_the_links_of_a_chain_carry_what_its_relayed_inputs_are_checked_against():
    from protocol.relay_auth import digest
    _, config, server, tokens = chain_server()
    items = sorted(server.start_step(), key=lambda i: i.group)
    fields = [server.work_out(item).message.fields for item in items]
    pieces = [digest(p) for p in server.param_pieces()]
    assert [f["params_digests"] for f in fields] == [[], pieces, pieces]
    assert fields[0]["sum_key_in"] == "" and fields[-1]["sum_key_out"] == ""
    assert fields[0]["sum_key_out"] == fields[1]["sum_key_in"] != fields[1]["sum_key_out"] == fields[2]["sum_key_in"]
    server.in_flight = None
    server.start_step()                                      # the next step: fresh keys
    assert server.work_out(items[1]).message["sum_key_in"] not in (fields[1]["sum_key_in"], "")


def test_a_sum_in_another_dtype_than_the_run_s_chain_sums_is_refused():
    """A float32 sum in a run whose chains sum in bfloat16 (or the reverse) would not be the
    coordinator's own sum: the coordinator refuses it with an answer (SPEC.md 4.5)."""
    for sums, sent_dtype in (("wire", np.float32), ("run", np.uint16)):
        _, config, server, tokens = chain_server(wire_dtype="bfloat16", chain_sums=sums)
        server.start_step()
        chain = server.in_flight.chain
        group, token = chain.groups[-1], chain.tokens[-1]
        size = server.state.layout.pieces[0][1]
        result = server.accept_piece(token, 1, group, 0, np.zeros(size, sent_dtype), prefix=True)
        assert not result and result.answer and "relay chains sum in" in result.refusal, result
