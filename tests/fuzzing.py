"""A seeded generator of malformed CLSTM/1 frame sets, shared by the decode and live fuzz tests."""
import random

import msgpack
import numpy as np

from protocol import SIGNATURE, Message, encode


def valid_push(dims: dict, token: int = 7, step: int = 0, chunks=(0,)) -> list[bytes]:
    b, dtype = len(chunks), dims.get("float", "<f4")
    message = Message("push", {"token": token, "step": step, "chunks": list(chunks), "loss": 1.0, "compute_s": 0.1},
                      {"grad": np.zeros(dims["P"], dtype), "h": np.zeros((dims["S"], b, dims["W"]), dtype),
                       "c": np.zeros((dims["S"], b, dims["W"]), dtype)})
    return [bytes(f) for f in encode(message)]


def malformed(rng: random.Random, good: list[bytes], dims: dict) -> list[bytes]:
    """One frame set that decode must refuse: 8 kinds, chosen by the generator."""
    kind = rng.randrange(8)
    frames = [bytearray(f) for f in good]
    if kind == 0:                                        # random bytes
        frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40))) for _ in range(rng.randint(1, 6))]
    elif kind == 1:                                      # corrupted, truncated header
        header = frames[1]
        for _ in range(rng.randint(0, 5)):
            header[rng.randrange(len(header))] = rng.getrandbits(8)
        frames[1] = header[:rng.randrange(1, len(header))]
    elif kind == 2:                                      # a truncated array frame
        k = rng.randrange(2, len(frames))
        frames[k] = frames[k][:rng.randrange(len(frames[k]))]
    elif kind == 3:                                      # wrong protocol version
        frames[0] = rng.choice([b"CLSTM/2", b"", b"HTTP/1.1", b"CLSTM/1 "])
    elif kind == 4:                                      # wrong types / unknown command / extra field
        header = {"cmd": rng.choice(["push", "launch", "exec", 3, None]), "arrays": [],
                  "token": rng.choice([-1, "t", None, 2 ** 64 - 1, 1.5, [1]]), "extra": rng.random()}
        frames = [SIGNATURE, msgpack.packb(header)]
    elif kind == 5:                                      # wrong and huge shapes
        shape = rng.choice([[2 ** 31 - 1], [dims["P"] + 1], [2 ** 20, 2 ** 20], [-3], [1, 2, 3, 4, 5]])
        header = {"cmd": "push", "token": 7, "step": 0, "chunks": [0], "loss": 1.0, "compute_s": 0.0,
                  "arrays": [["grad", "<f4", shape], ["h", "<f4", [1]], ["c", "<f4", [1]]]}
        frames = [SIGNATURE, msgpack.packb(header), b"\0" * 4, b"\0" * 4, b"\0" * 4]
    elif kind == 6:                                      # NaN / Inf gradients
        grad = np.zeros(dims["P"], dims.get("float", "<f4"))
        grad[rng.randrange(grad.size)] = rng.choice([np.nan, np.inf, -np.inf])
        frames[2] = grad.tobytes()
    else:                                                # oversized msgpack header
        frames[1] = msgpack.packb({"cmd": "push", "pad": "x" * rng.randint(65 * 1024, 80 * 1024)})
    return [bytes(f) for f in frames]
