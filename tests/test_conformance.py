"""protocol/SPEC.md pinned to behaviour: a minimal worker built only on protocol/ (no model
code) drives a real coordinator, and each gap an independent implementation found is tested."""
import math
import os
import time

import numpy as np
import pytest

import helpers
from helpers import Peer
from coordinator.chain import NO_LINKS
from protocol import SIGNATURE, Message, encode
from protocol.relay_auth import new_key, sum_mac

pytestmark = pytest.mark.timeout(120)


def spec_layout(layers: int, hidden: int, vocab: int) -> list[tuple[str, list[int]]]:
    """The parameter vector as SPEC.md section 4.1 writes it down."""
    rows = []
    for layer in range(layers):
        rows += [(f"lstm{layer}.W_x", [vocab if layer == 0 else hidden, 4 * hidden]),
                 (f"lstm{layer}.W_h", [hidden, 4 * hidden]), (f"lstm{layer}.b", [4 * hidden])]
    return rows + [("head.W", [hidden, vocab]), ("head.b", [vocab])]


def zero_push(work: Message, dtype=None, **fields) -> Message:
    """A push of the states it was given: valid, whatever the model."""
    dtype = dtype or work.arrays["h"].dtype
    arrays = {"h": work.arrays["h"].astype(dtype), "c": work.arrays["c"].astype(dtype)}
    header = {"token": work["token"], "step": work["step"], "chunks": work["chunks"], "loss": 0,
              "compute_s": 0.0, **fields}
    return Message("push", header, arrays)


def zero_gradient(work: Message, pieces: list[Message], dtype=None) -> list[Message]:
    """A zero gradient, one `grad` per piece, top piece first as the project's worker sends them."""
    names = {k: work[k] for k in ("token", "step", "chunks")}
    return [Message("grad", {**names, "piece": p["piece"], "prefix": False, "mac": ""},
                    {"grad": np.zeros(p.arrays["params"].size, dtype or p.arrays["params"].dtype)})
            for p in reversed(pieces)]


def answer(peer: Peer, work: Message, pieces: list[Message]) -> None:
    for message in zero_gradient(work, pieces) + [zero_push(work)]:
        peer.send(message)


def unchecked(message: Message, order=None) -> list[bytes]:
    """Frames for a message that encode() would refuse (bad field values, arrays reordered)."""
    import msgpack
    from protocol import SIGNATURE
    names = order or list(message.arrays)
    specs = [[n, message.arrays[n].dtype.str, list(message.arrays[n].shape)] for n in names]
    header = msgpack.packb({"cmd": message.cmd, "arrays": specs, **message.fields})
    return [SIGNATURE, header, *[message.arrays[n].tobytes() for n in names]]


@pytest.fixture
def coordinator(corpus, tmp_path):
    """A coordinator (real process) for a 2-step float64 run with dropout; stopped afterwards."""
    save_dir = str(tmp_path)
    process, endpoint = helpers.start_coordinator(corpus, save_dir, 2, "--dropout", "0.25", "--seed", "5")
    peers = []

    def peer() -> Peer:
        peers.append(Peer(endpoint))
        return peers[-1]
    yield process, endpoint, save_dir, peer
    for p in peers:
        p.close()
    helpers.stop_all(process)


def register(peer: Peer, name="spec-worker") -> Message:
    peer.send(Message("register", {"name": name, "relay": "", "arithmetic": "spec-built/1"}))
    return peer.expect("welcome")


def test_a_worker_written_from_the_spec_trains_a_run(coordinator):
    process, _, save_dir, peer = coordinator
    worker = peer()
    welcome = register(worker, "w" * 128)                  # the longest name allowed
    config = welcome["config"]
    expected = spec_layout(config["layers"], config["hidden"], len(welcome["vocab"]))
    assert list(zip(welcome["names"], welcome["shapes"])) == expected
    size = sum(math.prod(shape) for _, shape in expected)
    # SPEC 4.4: one piece per layer, the head in the top one
    layer_sizes = [sum(math.prod(shape) for name, shape in expected if name.startswith(f"lstm{layer}."))
                   for layer in range(config["layers"])]
    assert welcome["pieces"] == layer_sizes[:-1] + [size - sum(layer_sizes[:-1])]
    for step in range(2):
        work, pieces = worker.expect_work()
        assert (work["step"], work["dropout"], work["seed"]) == (step, 0.25, 5)
        assert list(work.arrays) == ["h", "c", "inputs", "targets"]
        assert [p.arrays["params"].size for p in pieces] == welcome["pieces"]
        assert all(p.arrays["params"].dtype == np.float64 for p in pieces)
        answer(worker, work, pieces)                       # loss sent as an int: a float field may be
        assert worker.expect("ack")["status"] == "accepted"
    assert "training finished" in worker.expect("stop")["reason"]
    assert process.wait(30) == 0
    assert [m["step"] for m in helpers.metrics(save_dir)] == [1, 2]


def test_refused_pushes_are_answered_with_a_reference_and_three_drop_the_worker(coordinator):
    process, endpoint, save_dir, peer = coordinator
    broken = peer()
    token = register(broken)["token"]
    work, pieces = broken.expect_work()
    reference = {"cmd": "push", "token": token, "step": 0, "chunks": work["chunks"]}
    sent = time.monotonic()
    broken.send(zero_gradient(work, pieces, np.float32)[0])     # answered; its push will count
    refused = broken.expect("reject")
    assert refused["refers_to"] == dict(reference, cmd="grad") and "<f4" in refused["reason"]
    broken.send(zero_push(work, dtype=np.float32))         # the run is float64
    refused = broken.expect("reject")
    assert refused["refers_to"] == reference and not refused["reregister"]
    assert "<f4" in refused["reason"] and "<f8" in refused["reason"]
    broken.send(unchecked(zero_push(work, step=-1)))        # SPEC 5.3: answered, not dropped
    assert broken.expect("reject")["refers_to"] == dict(reference, step=None)
    broken.send(unchecked(zero_push(work), order=["c", "h"]))
    assert "out of order" in broken.expect("reject")["reason"]
    stop = broken.expect("stop")
    waited = time.monotonic() - sent
    assert "3 refused pushes in a row" in stop["reason"]
    assert waited < 5, f"the bad worker held the step for {waited:.1f}s"
    good = helpers.spawn("worker", "--connect", endpoint, log_path=os.path.join(save_dir, "worker.log"))
    try:
        assert process.wait(60) == 0                       # its chunks went to the real worker
    finally:
        helpers.stop_all(good)
    print(f"a worker sending only invalid pushes was stopped {waited:.3f}s after its first")


def test_only_valid_messages_with_the_current_token_are_signs_of_life(coordinator):
    _, _, save_dir, peer = coordinator
    idler = peer()
    token = register(idler)["token"]
    idler.expect_work()
    deadline = time.monotonic() + 20
    while "declared dead" not in open(os.path.join(save_dir, "coordinator.log")).read():
        assert time.monotonic() < deadline, "a peer sending only pulls and bad heartbeats stayed alive"
        idler.send(unchecked(Message("heartbeat", {"token": str(token)})))
        idler.send(Message("pull"))
        idler.expect("model")
    idler.send(Message("heartbeat", {"token": token}))
    assert idler.expect("reject")["reregister"] is True


def test_bye_is_never_answered_and_a_stranger_s_bye_is_not_invited_back(coordinator):
    _, _, _, peer = coordinator
    leaving = peer()
    token = register(leaving)["token"]
    leaving.expect_work()
    leaving.send(Message("bye", {"token": token + 1}))
    leaving.send(Message("bye", {"token": token}))
    assert leaving.quiet_for(0.5)
    leaving.send(Message("heartbeat", {"token": token}))        # it left: its token is gone
    assert leaving.expect("reject")["refers_to"]["token"] == token


def test_a_token_is_bound_to_the_socket_that_registered_it(coordinator):
    _, _, _, peer = coordinator
    owner, thief = peer(), peer()
    token = register(owner)["token"]
    work, pieces = owner.expect_work()
    for message in zero_gradient(work, pieces):
        thief.send(message)                                 # dropped: not the thief's token
    thief.send(zero_push(work))
    refused = thief.expect("reject")
    assert refused["reregister"] is True and refused["refers_to"]["token"] == token
    owner.send(zero_push(work))                             # its own pieces never came: refused
    assert "every piece of its gradient" in owner.expect("reject")["reason"]
    answer(owner, work, pieces)
    assert owner.expect("ack")["status"] == "accepted"


@pytest.fixture
def hand_coordinator(tmp_path):
    """A real worker against a hand-driven coordinator (a ROUTER speaking protocol/ only):
    (worker process, next_command(timeout) -> (identity, message), answer(identity, message))."""
    import zmq
    from protocol import decode
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = helpers.spawn("worker", "--connect", f"tcp://127.0.0.1:{port}",
                           log_path=str(tmp_path / "worker.log"))

    def next_command(timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if router.poll(50):
                identity, *frames = router.recv_multipart()
                message = decode(frames)
                if message.cmd != "heartbeat":
                    return identity, message
        return None, None

    def answer(identity, message):
        router.send_multipart([identity, *encode(message)])
    yield worker, next_command, answer
    helpers.stop_all(worker)
    router.close(0)
    context.term()


def tiny_welcome(token: int, pieces=None, liveness_s: float = 5.0) -> Message:
    """A 1 x 4 model over "ab", and its one piece."""
    from model.config import Config
    from model.params import ParamLayout
    config = Config(layers=1, hidden=4, chunks=2, seq_len=5).to_dict()
    pieces = pieces or [stop - start for start, stop in ParamLayout.for_model(2, 1, 4).pieces]
    return Message("welcome", {"token": token, "config": config, "vocab": "ab", "heartbeat_s": 0.2,
                               "liveness_s": liveness_s, "names": [], "shapes": [], "pieces": pieces})


def tiny_work(token: int) -> list[Message]:
    names = {"token": token, "step": 0, "chunks": [0]}
    state = np.zeros((1, 1, 4), np.float32)
    work = Message("work", {**names, "dropout": 0.0, "seed": 1, "wire": "<f4", "weight_drop": 0.0, "dropout_form": "step", "sum_wire": "<f4", **NO_LINKS},
                   {"h": state, "c": state, "inputs": np.zeros((1, 5), np.int32), "targets": np.ones((1, 5), np.int32)})
    size = tiny_welcome(token)["pieces"][0]
    return [work, Message("params", {"step": 0, "piece": 0}, {"params": np.full(size, 0.1, np.float32)})]


def test_a_worker_re_registers_only_for_a_reject_naming_its_current_token(hand_coordinator):
    worker, next_command, answer = hand_coordinator
    identity, message = next_command()
    assert message.cmd == "register"
    answer(identity, tiny_welcome(7))
    answer(identity, tiny_work(7)[0])               # its parameters never come: the job waits
    old = {"cmd": "push", "token": 6, "step": 3, "chunks": [0]}
    answer(identity, Message("reject", {"reason": "stale", "reregister": True, "refers_to": old}))
    assert next_command(1.0) == (None, None), "a reject about an older token made it register"
    answer(identity, Message("reject", {"reason": "unknown token", "reregister": True,
                                        "refers_to": dict(old, token=7)}))
    assert next_command()[1].cmd == "register"
    answer(identity, tiny_welcome(8))
    for message in tiny_work(8):                     # the same step and chunks, the new token
        answer(identity, message)
    piece, push = next_command()[1], next_command()[1]
    assert (piece.cmd, piece["token"], piece["piece"]) == ("grad", 8, 0)
    assert (push.cmd, push["token"], push["chunks"]) == ("push", 8, [0])


def test_a_worker_that_cuts_the_parameters_differently_says_so_and_exits(hand_coordinator, tmp_path):
    worker, next_command, answer = hand_coordinator
    identity, message = next_command()
    answer(identity, tiny_welcome(7, pieces=[1, 121]))
    assert next_command()[1].fields == {"token": 7}                 # SPEC 4.4: `bye`, so it is dropped at once
    assert worker.wait(20) == 2
    errors = [line for line in open(tmp_path / "worker.log") if line.startswith("error:")]
    assert len(errors) == 1 and "run the same version" in errors[0]


def test_a_new_registration_starts_afresh_even_when_steps_go_back(hand_coordinator):
    """SPEC 5.6: after a coordinator resumes from an older checkpoint its steps number lower; a
    worker that kept its latest step across registrations would skip every work and hang."""
    worker, next_command, answer = hand_coordinator
    identity, _ = next_command()
    answer(identity, tiny_welcome(7))
    work, params = tiny_work(7)
    work.fields["step"], params.fields["step"] = 5, 5
    for message in (work, params):
        answer(identity, message)
    assert next_command()[1].cmd == "grad" and next_command()[1].cmd == "push"
    answer(identity, Message("reject", {"reason": "restarted", "reregister": True, "refers_to": {
        "cmd": "heartbeat", "token": 7, "step": None, "chunks": []}}))
    assert next_command()[1].cmd == "register"
    answer(identity, tiny_welcome(8))
    for message in tiny_work(8):                                     # step 0 < 5: computed all the same
        answer(identity, message)
    assert next_command()[1].cmd == "grad" and next_command()[1]["step"] == 0


def test_a_sum_from_outside_a_chain_and_unreadable_messages_are_answered_but_not_counted(coordinator):
    """SPEC 4.5: a `grad` with prefix true from a worker that is not a chain's last is answered
    with `reject`; SPEC 5.5: messages whose command cannot be read are answered and never count."""
    process, _, save_dir, peer = coordinator
    worker = peer()
    register(worker)
    work, pieces = worker.expect_work()
    sum_piece = zero_gradient(work, pieces)[0]
    sum_piece.fields["prefix"] = True
    worker.send(sum_piece)
    refused = worker.expect("reject")
    assert "not the last of this step's relay chain" in refused["reason"] and not refused["reregister"]
    for _ in range(4):                                       # more than 3: none counts toward a stop
        worker.send([SIGNATURE, b"\xc1"])
        assert worker.expect("reject")["refers_to"]["cmd"] == ""
    answer(worker, work, pieces)
    assert worker.expect("ack")["status"] == "accepted"


def test_a_relay_endpoint_must_be_the_worker_s_own_address(coordinator):
    """SPEC 4, `register`: a relay anywhere else is refused with a reason; the worker still joins."""
    _, _, save_dir, peer = coordinator
    for relay, reason in (("tcp://*:5", "is not on the address"), ("tcp://10.9.9.9:4000", "is not on the address"),
                          ("tcp://127.0.0.1:70000", "not 1-65535"), ("tcp://127.0.0.1:0", "not 1-65535")):
        foreign = peer()
        foreign.send(Message("register", {"name": "foreign", "relay": relay, "arithmetic": ""}))
        refused = foreign.expect("reject")
        assert reason in refused["reason"] and refused["refers_to"]["cmd"] == "register"
        assert foreign.expect("welcome")["token"] > 0
    log = open(os.path.join(save_dir, "coordinator.log")).read()
    assert log.count("refused the relay of worker 'foreign'") == 4


def test_a_work_whose_parameters_stop_coming_is_dropped_and_the_worker_registers_again(hand_coordinator,
                                                                                      tmp_path):
    """A connection that broke between a `work` and its `params` (ZeroMQ reconnects silently):
    the worker does not wait forever with a live heartbeat and a stuck computation."""
    worker, next_command, answer = hand_coordinator
    identity, _ = next_command()
    answer(identity, tiny_welcome(7, liveness_s=1.0))
    answer(identity, tiny_work(7)[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer(identity, Message("heartbeat", {"token": 7}))     # the coordinator is alive
        _, message = next_command(0.2)
        if message is not None:
            assert message.cmd == "register"
            break
    else:
        raise AssertionError("the worker kept waiting for parameters that never came")
    assert "parameters of step 0 stopped coming" in open(tmp_path / "worker.log").read()
    answer(identity, tiny_welcome(8))
    for message in tiny_work(8):
        answer(identity, message)
    assert next_command()[1].cmd == "grad" and next_command()[1].cmd == "push"


def test_a_chain_sum_that_arrives_before_its_work_is_kept_for_it(hand_coordinator):
    """SPEC.md 4.5: the worker before it in a chain may be faster than the coordinator's `work`."""
    import zmq
    from worker.compute import WorkerCompute
    worker, next_command, answer = hand_coordinator
    identity, register = next_command()
    assert register["relay"].startswith("tcp://127.0.0.1:")
    welcome = tiny_welcome(7)
    answer(identity, welcome)
    size = welcome["pieces"][0]
    before = np.linspace(-1, 1, size).astype(np.float32)       # the sum of the group before
    context = zmq.Context()
    relay = context.socket(zmq.DEALER)
    relay.connect(register["relay"])
    key = new_key()                     # the link's key, which only the coordinator hands out
    forged = Message("grad", {"token": 3, "step": 0, "chunks": [0], "piece": 0, "prefix": True,
                              "mac": sum_mac(new_key(), 0, [0], 0, before)}, {"grad": -before})
    relay.send_multipart(encode(forged))                         # a stranger's sum: dropped
    relay.send_multipart(encode(Message("grad", {**forged.fields, "mac": sum_mac(key, 0, [0], 0, before)},
                                        {"grad": before})))
    work, params = tiny_work(7)
    work.fields.update(chunks=[1], sum_from=True, sum_key_in=key)  # after the sum, as a relay may be
    try:
        assert next_command(0.5) == (None, None)
        for message in (work, params):
            answer(identity, message)
        piece, push = next_command()[1], next_command()[1]
    finally:
        relay.close(0)
        context.term()
    own, computer = [], WorkerCompute(welcome["config"], welcome["vocab"])   # what the worker adds
    incoming = computer.incoming()
    incoming.put(0, params.arrays["params"])
    computer.compute(work, incoming, own.append)
    assert (piece.cmd, piece["prefix"], piece["chunks"], push.cmd) == ("grad", True, [1], "push")
    np.testing.assert_array_equal(piece.arrays["grad"], before + own[0].arrays["grad"])

