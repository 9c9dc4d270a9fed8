"""Hostile input against live processes: a nested header and a flood at a worker's relay and at
the coordinator, and a hostile `model` reply to the pull client. Nothing crashes, starves or
changes a bit of the model; every drop is accounted for in the log."""
import os
import random
import re
import threading

import msgpack
import numpy as np
import pytest
import zmq

from coordinator.client import PullError, pull_model
from protocol import SIGNATURE, Message, encode
import helpers
from helpers import _deep, malformed, valid_grad

pytestmark = pytest.mark.timeout(180)


def nested_header(depth: int = 1000) -> list[bytes]:
    """A heartbeat whose token is a list nested `depth` deep: 1,054 bytes once killed a coordinator."""
    raw = msgpack.packb({"cmd": "heartbeat", "arrays": [], "token": "\x00hole"})
    return [SIGNATURE, raw.replace(msgpack.packb("\x00hole"), _deep(depth, "list"))]


def accounted_drops(log: str) -> int:
    """Drops a process logged, the rate limiter's suppressed lines included."""
    shown = len(re.findall(r"dropped invalid message", log))
    return shown + sum(int(n) for n in re.findall(r"\.\.\. (\d+) similar lines suppressed", log))


def flood(endpoint: str, frame_sets: list[list[bytes]]) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 2000)
    socket.connect(endpoint)
    for frames in frame_sets:
        socket.send_multipart(frames)
    socket.close()
    context.term()


def test_a_nested_header_and_a_flood_at_relay_and_coordinator_change_nothing(corpus, tmp_path):
    """The first worker waits alone (min-workers 2) while its relay and the coordinator take a
    nested header and thousands of invalid messages; it must keep heartbeating (liveness 1.5 s),
    and the run, once the second worker comes, ends on the bits of an unattacked one."""
    attacked, clean = str(tmp_path / "attacked"), str(tmp_path / "clean")
    steps = 6
    coordinator, endpoint = helpers.start_coordinator(corpus, attacked, steps, workers=2)
    first = helpers.spawn("worker", "--connect", endpoint, "--name", "w0",
                          log_path=os.path.join(attacked, "worker0.log"))
    second = None
    try:
        worker_log = os.path.join(attacked, "worker0.log")
        helpers.wait_for(lambda: "relaying on" in open(worker_log).read(), 30, "the worker's relay")
        relay = re.search(r"relaying on (tcp://\S+)", open(worker_log).read()).group(1)
        rng = random.Random(7)
        dims = {"P": 10, "L": 2, "H": 16, "T": 20, "pieces": [4, 6], "float": "<f8"}
        garbage = [nested_header()] + [malformed(rng, valid_grad(dims), dims) for _ in range(3000)]
        senders = [threading.Thread(target=flood, args=(target, garbage)) for target in (relay, endpoint)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        # a starved worker would be declared dead within liveness (1.5 s) of going silent
        assert helpers.wait_for(lambda: accounted_drops(open(os.path.join(attacked, "coordinator.log")).read())
                                >= 20, 30, "the coordinator's drop lines")
        second = helpers.spawn("worker", "--connect", endpoint, "--name", "w1",
                               log_path=os.path.join(attacked, "worker1.log"))
        assert coordinator.wait(120) == 0
        assert first.wait(20) == 0 and second.wait(20) == 0
    finally:
        helpers.stop_all(coordinator, first, *([second] if second else []))
    coordinator_log = open(os.path.join(attacked, "coordinator.log")).read()
    assert "declared dead" not in coordinator_log and "Traceback" not in coordinator_log
    assert accounted_drops(open(worker_log).read()) == len(garbage), "every drop at the relay is logged"
    total = int(re.search(r"(\d+) invalid or refused messages in this run", coordinator_log).group(1))
    assert total == accounted_drops(coordinator_log) == len(garbage)

    coordinator, endpoint, pool = helpers.start_cluster(corpus, clean, steps, 2)
    try:
        assert coordinator.wait(120) == 0
    finally:
        helpers.stop_all(coordinator, *pool)
    assert np.array_equal(helpers.params_of(attacked), helpers.params_of(clean))


class FakeCoordinator:
    """A ROUTER that answers every `pull` with the frames it is given."""

    def __init__(self, answer: list[bytes]):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.answer, self.done = answer, threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.done.is_set():
            if self.socket.poll(50):
                identity = self.socket.recv_multipart()[0]
                self.socket.send_multipart([identity, *self.answer])

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.done.set()
        self.thread.join(5)
        self.socket.close()
        self.context.term()


def model_reply(config=None, vocab="abc", names=None, shapes=None, params=None, **header) -> list[bytes]:
    from model.config import Config
    from model.params import ParamLayout
    config = dict(Config(layers=1, hidden=4, dtype="float32").to_dict(), **(config or {}))
    layout = ParamLayout.for_model(len(vocab), 1, 4)
    names = list(layout.names) if names is None else names
    shapes = [list(s) for s in layout.shapes] if shapes is None else shapes
    params = np.zeros(layout.total, np.float32) if params is None else params
    message = Message("model", {"step": 3, "config": config, "vocab": vocab, "names": names, "shapes": shapes},
                      {"params": params})
    frames = [bytes(f) for f in encode(message)]
    if header:          # fields the protocol refuses, packed by hand
        fields = msgpack.unpackb(frames[1])
        fields.update(header)
        frames[1] = msgpack.packb(fields)
    return frames


@pytest.mark.timeout(60)
def test_a_hostile_model_reply_is_one_error_for_the_sampler_never_a_crash(tmp_path):
    with FakeCoordinator(model_reply()) as good:
        meta, params = pull_model(good.endpoint, 5)
    assert meta["step"] == 3 and meta["hidden"] == 4 and params.size > 0
    hostile = {
        "a config of wrong types": model_reply(config={"hidden": "4"}),
        "a config out of range": model_reply(config={"layers": 0}),
        "more layers than names": model_reply(config={"layers": 10 ** 15}),
        "names of another model": model_reply(names=["x"] * 8),
        "a vector of the wrong size": model_reply(params=np.zeros(3, np.float32)),
        "another dtype than the config's": model_reply(params=np.zeros(len(model_reply()[2]) // 4, np.float64)),
        "an empty vocabulary": model_reply(vocab=""),
    }
    refusals = [(answer, 5, "sent a model this version cannot use|do not fit") for answer in hostile.values()]
    dropped = [(frames, 1, "no answer") for frames in (nested_header(), model_reply(step=_deep_value()))]
    for answer, timeout, told in refusals + dropped:
        with FakeCoordinator(answer) as fake, pytest.raises(PullError, match=told):
            pull_model(fake.endpoint, timeout)
    with FakeCoordinator(model_reply(config={"hidden": -4})) as fake:
        result = helpers.run_script("sample.py", "--coordinator", fake.endpoint, "--length", "5", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def _deep_value():
    value = 1
    for _ in range(20):
        value = [value]
    return value
