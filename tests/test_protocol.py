"""CLSTM/4 encode/decode: round trips, every kind of malformed message, a seeded fuzz."""
import random

import msgpack
import numpy as np
import pytest

from protocol import SIGNATURE, Message, ProtocolError, decode, encode

DIMS = {"P": 10, "L": 2, "H": 3, "T": 4, "pieces": [4, 6], "float": "<f4"}


def push(**changes):
    fields = {"token": 7, "step": 3, "chunks": [1, 2], "loss": 12.5, "compute_s": 0.1}
    arrays = {"h": np.ones((2, 2, 3), np.float32), "c": np.zeros((2, 2, 3), np.float32)}
    fields.update(changes.pop("fields", {}))
    arrays.update(changes.pop("arrays", {}))
    return Message("push", fields, arrays)


def grad(**changes):
    """Piece 1 (of sizes 4 and 6) of a gradient."""
    fields = {"token": 7, "step": 3, "chunks": [1, 2], "piece": 1, "prefix": False, "mac": ""}
    arrays = {"grad": np.arange(6, dtype=np.float32)}
    fields.update(changes.pop("fields", {}))
    arrays.update(changes.pop("arrays", {}))
    return Message("grad", fields, arrays)


def frames_of(message):
    return [bytes(f) for f in encode(message)]


def header_frames(header, arrays=()):
    return [SIGNATURE, msgpack.packb(header), *arrays]


def every_command() -> list[Message]:
    """One valid message of every command, for DIMS."""
    work = Message("work", {"token": 1, "step": 0, "chunks": [0], "dropout": 0.25, "seed": 3, "wire": "bf16", "weight_drop": 0.1, "dropout_form": "window", "sum_wire": "bf16",
                            "params_to": "tcp://10.0.0.2:4000", "sum_from": True, "sum_to": "",
                            "params_digests": ["ab" * 32, "cd" * 32], "sum_key_in": "0f" * 32, "sum_key_out": ""},
                   {"h": np.ones((2, 1, 3), np.float32), "c": np.ones((2, 1, 3), np.float32),
                    "inputs": np.zeros((1, 4), np.int32), "targets": np.ones((1, 4), np.int32)})
    params = Message("params", {"step": 0, "piece": 0}, {"params": np.ones(4, np.uint16)})
    return [push(), grad(), work, params, Message("register", {"name": "w", "relay": "", "arithmetic": "a" * 256}),
            Message("sums", {"token": 1, "step": 0, "chunks": [0, 1], "sum_in": ["", "ab" * 32], "sum_out": ["cd" * 32, ""]}),
                Message("direct", {"step": 0, "chunks": [0]}), Message("heartbeat", {"token": 1}),
                Message("bye", {"token": 1}), Message("pull"), Message("stop", {"reason": "done"}),
                Message("welcome", {"token": 1, "config": {"a": 1}, "vocab": "ab", "heartbeat_s": 1.0,
                                    "liveness_s": 5, "names": ["w"], "shapes": [[10]], "pieces": [4, 6]}),
                Message("ack", {"step": 1, "chunks": [0], "status": "accepted"}),
                Message("reject", {"reason": "x", "reregister": True, "refers_to": {
                    "cmd": "push", "token": None, "step": 4, "chunks": [1, 2]}}),
                Message("model", {"step": 1, "config": {}, "vocab": "ab", "names": ["w"], "shapes": [[10]]},
                        {"params": np.ones(10, np.float32)})]


def test_round_trip_every_command():
    messages = every_command()
    for message in messages:
        decoded = decode(frames_of(message), dict(DIMS, wire="bf16"))
        assert decoded.cmd == message.cmd and decoded.fields == message.fields
        for name, array in message.arrays.items():
            np.testing.assert_array_equal(decoded.arrays[name], array)
            assert decoded.arrays[name].dtype == array.dtype


@pytest.mark.parametrize("make, bad, match", [
    (push, dict(fields={"loss": float("nan")}), "loss"),
    (grad, dict(arrays={"grad": np.array([np.inf] * 6, np.float32)}), "NaN or infinite"),
    (grad, dict(arrays={"grad": np.ones(4, np.float32)}), "piece = 6"),
    (grad, dict(fields={"piece": 2}), "piece 2 does not exist"),
    (grad, dict(fields={"piece": -1}), "piece"),
    (grad, dict(arrays={"grad": np.ones(6, np.float64)}), "this run uses <f4"),
    (push, dict(arrays={"h": np.ones((2, 3, 3), np.float32)}), "B = 2"),
    (push, dict(arrays={"c": np.ones((2, 2), np.float32)}), "3 dimensions"),
    (push, dict(fields={"chunks": [2, 1]}), "chunks"),
    (grad, dict(fields={"chunks": []}), "chunks"),
    (push, dict(fields={"token": -1}), "token"),
    (push, dict(fields={"token": True}), "token"),
    (grad, dict(fields={"step": "3"}), "step"),
])
def test_malformed_push_or_piece_is_rejected(make, bad, match):
    message = make(**bad)
    with pytest.raises(ProtocolError, match=match):
        try:
            frames = frames_of(message)          # encode validates too
        except ProtocolError:
            frames = encode_unchecked(message)
        decode(frames, DIMS)


@pytest.mark.parametrize("form", ["locked", "", None, ["window"], 1])
def test_a_work_whose_dropout_form_is_not_the_spec_s_is_rejected(form):
    work = every_command()[2]
    work.fields["dropout_form"] = form
    with pytest.raises(ProtocolError, match="dropout_form"):
        decode(encode_unchecked(work), dict(DIMS, wire="bf16"))


def encode_unchecked(message):
    specs = [[n, a.dtype.str, list(a.shape)] for n, a in message.arrays.items()]
    header = {"cmd": message.cmd, "arrays": specs, **message.fields}
    return header_frames(header, [a.tobytes() for a in message.arrays.values()])


def test_structural_errors():
    good = frames_of(push())
    cases = {
        "wrong protocol signature": [b"CLSTM/0", *good[1:]],
        "at least 2 frames": [SIGNATURE],
        "not valid msgpack": [SIGNATURE, b"\xc1\xff", *good[2:]],
        "must be a map": [SIGNATURE, msgpack.packb([1, 2])],
        "unknown command": header_frames({"cmd": "launch", "arrays": []}),
        "unexpected fields": header_frames({"cmd": "pull", "arrays": [], "extra": 1}),
        "missing fields": header_frames({"cmd": "register", "arrays": []}),
        "does not match": good[:-1],
        "frame has": good[:-1] + [good[-1][:-4]],
        "exceeds": [SIGNATURE, b"\x80" * (64 * 1024 + 1)],
        "malformed array description": header_frames(
            {"cmd": "model", "step": 1, "config": {}, "vocab": "a", "names": [], "shapes": [],
             "arrays": [["params", "<f4", [2 ** 40]]]}, [b""]),
        "unexpected or repeated": header_frames(
            {"cmd": "model", "step": 1, "config": {}, "vocab": "a", "names": [], "shapes": [],
             "arrays": [["weights", "<f4", [1]]]}, [b"\0" * 4]),
    }
    for match, frames in cases.items():
        with pytest.raises(ProtocolError, match=match):
            decode(frames, DIMS)


def test_oversized_message_is_refused_before_parsing():
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(frames_of(push()), DIMS, max_message_bytes=100)


def test_seeded_fuzz_decode_refuses_every_malformed_set():
    from helpers import malformed, valid_grad
    rng = random.Random(1234)
    good = valid_grad(DIMS)
    decode(good, DIMS)
    for _ in range(10_000):
        frames = malformed(rng, good, DIMS)
        with pytest.raises(ProtocolError):
            decode(frames, DIMS)


def test_hostile_structure_in_any_field_is_refused_never_raised():
    """Every command's every field (and cmd, and the array list) replaced by deep nesting, huge
    and negative ints, NaN/inf, wrong types, oversized lists and maps: decode answers with a
    Message or a ProtocolError, never another exception (a nested header once killed a coordinator)."""
    from helpers import structural
    rng = random.Random(4321)
    outcomes = {"refused": 0, "accepted": 0}
    for message in every_command():
        good = frames_of(message)
        for _ in range(300):
            try:
                decode(structural(rng, good), DIMS)
                outcomes["accepted"] += 1
            except ProtocolError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > 10 * outcomes["accepted"]


def test_a_header_nested_a_thousand_deep_is_refused_with_a_short_reason():
    from helpers import _deep
    raw = msgpack.packb({"cmd": "heartbeat", "arrays": [], "token": "\x00hole"})
    for kind in ("list", "map"):
        for depth in (5, 1000, 50_000):
            with pytest.raises(ProtocolError) as refused:
                decode([SIGNATURE, raw.replace(msgpack.packb("\x00hole"), _deep(depth, kind))], DIMS)
            assert len(str(refused.value)) < 200


@pytest.mark.timeout(20)
def test_tracked_send_says_when_the_arrays_may_be_reused(tmp_path):
    import zmq
    from protocol.transport import poll, receive, send
    context = zmq.Context()
    try:
        sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        sender.bind(f"ipc://{tmp_path}/pair")
        receiver.connect(f"ipc://{tmp_path}/pair")
        grad = np.ones(4_000_000, np.float32)                 # larger than the socket buffers
        piece = Message("grad", {"token": 1, "step": 0, "chunks": [0], "piece": 0, "prefix": False, "mac": ""},
                        {"grad": grad})
        tracker = send(sender, piece, track=True)
        assert not tracker.done                                # 16 MB cannot all be written yet
        assert poll([receiver], 10)
        _, message, _ = receive(receiver, False, None, 1 << 30, print)
        assert message.arrays["grad"].sum() == grad.size
        tracker.wait(10)
        assert tracker.done
    finally:
        context.destroy(linger=0)


def test_field_types_as_the_spec_states_them():
    register = lambda name, relay="": [bytes(f) for f in encode(Message("register", {"name": "x", "relay": "", "arithmetic": "spec-built/1"}))][:1] + [
        msgpack.packb({"cmd": "register", "arrays": [], "name": name, "relay": relay, "arithmetic": ""})]
    assert decode(register("w" * 128))["name"] == "w" * 128
    with pytest.raises(ProtocolError, match="name"):
        decode(register("w" * 129))
    assert decode(register("w", "tcp://10.1.2.3:40000"))["relay"] == "tcp://10.1.2.3:40000"
    for bad in ("ipc:///tmp/x", "tcp://" + "h" * 300, 5):
        with pytest.raises(ProtocolError, match="relay"):
            decode(register("w", bad))
    with pytest.raises(ProtocolError, match="arithmetic"):
        decode([SIGNATURE, msgpack.packb({"cmd": "register", "arrays": [], "name": "x", "relay": "",
                                          "arithmetic": "a" * 257})])
    sums = lambda digests: Message("sums", {"token": 1, "step": 0, "chunks": [0], "sum_in": digests, "sum_out": []})
    assert decode(encode(sums(["", "ab" * 32])))["sum_in"] == ["", "ab" * 32]
    for bad in (["AB" * 32], ["ab"], "ab" * 32, [5]):
        with pytest.raises(ProtocolError, match="sum_in"):
            decode([SIGNATURE, msgpack.packb({"cmd": "sums", "arrays": [], "token": 1, "step": 0, "chunks": [0],
                                              "sum_in": bad, "sum_out": []})])
    assert decode(encode_unchecked(push(fields={"loss": 12, "compute_s": 0})), DIMS)["loss"] == 12
    for bad in (3.0, -1, True):
        with pytest.raises(ProtocolError, match="token"):
            decode(encode_unchecked(push(fields={"token": bad})), DIMS)


def test_arrays_must_come_in_the_listed_order():
    message = push()
    specs = [[n, message.arrays[n].dtype.str, list(message.arrays[n].shape)] for n in ("c", "h")]
    header = {"cmd": "push", "arrays": specs, **message.fields}
    frames = header_frames(header, [message.arrays[n].tobytes() for n in ("c", "h")])
    with pytest.raises(ProtocolError, match="out of order"):
        decode(frames, DIMS)


def test_a_refusal_names_what_could_be_read_of_the_message():
    with pytest.raises(ProtocolError) as refused:
        decode(encode_unchecked(push(fields={"step": -1})), DIMS)
    assert refused.value.reference == {"cmd": "push", "token": 7, "step": None, "chunks": [1, 2]}
    with pytest.raises(ProtocolError) as unreadable:
        decode([SIGNATURE, b"\xc1"], DIMS)
    assert unreadable.value.reference == {"cmd": "", "token": None, "step": None, "chunks": []}


def test_narrow_wire_dtypes_travel_only_where_the_spec_allows_them():
    narrow_dims = dict(DIMS, wire="bf16")
    bf16 = np.full(6, 0x3F80, np.uint16)                      # 1.0
    assert decode(frames_of(grad(arrays={"grad": bf16})), narrow_dims).arrays["grad"].dtype == np.uint16
    with pytest.raises(ProtocolError, match="this run uses <f4 or bf16"):
        decode(frames_of(grad(arrays={"grad": np.ones(6, np.float16)})), narrow_dims)
    with pytest.raises(ProtocolError, match="this run uses <f4"):
        decode(frames_of(grad(arrays={"grad": bf16})), DIMS)      # an exact run
    with pytest.raises(ProtocolError, match="must be one of"):
        decode(frames_of(push(arrays={"h": np.ones((2, 2, 3), np.uint16)})), narrow_dims)
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        decode(frames_of(grad(arrays={"grad": np.full(6, 0x7F80, np.uint16)})), narrow_dims)


def test_bfloat16_rounds_to_nearest_even_and_widens_exactly():
    from model.wire import narrow, widen, wire_round
    values = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 3e38, 1e-40],
                      np.float32)
    def reference(x):               # one value at a time, in Python integers
        import struct
        bits = struct.unpack("<I", struct.pack("<f", x))[0]
        upper, lower = bits >> 16, bits & 0xFFFF
        upper += lower > 0x8000 or (lower == 0x8000 and upper & 1)
        return struct.unpack("<f", struct.pack("<I", upper << 16))[0]
    expected = np.array([reference(float(v)) for v in values], np.float32)
    assert list(expected[:5]) == [1.0, 1.0, 1 + 4 * 2 ** -8, 1 + 2 * 2 ** -8, -2.5]
    np.testing.assert_array_equal(widen(narrow(values, "bfloat16"), np.float32), expected)
    assert narrow(values, "bfloat16").dtype == np.uint16
    np.testing.assert_array_equal(wire_round(values, "exact"), values)
    np.testing.assert_array_equal(wire_round(values[:5], "float16"), values[:5].astype(np.float16))
    assert narrow(values, "float16") is values                 # 3e38 overflows half: sent exact
