"""What the tests share: generated corpora, in-process steps, and real processes (coordinator,
workers, train_local, scripts) started with deadlines."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import msgpack
import numpy as np

from model.optim import RMSprop
from model.step import InProcessSource, apply_step
from protocol import SIGNATURE, Message, encode

def generated_text(n_chars: int, seed: int = 0) -> str:
    """A small play-like corpus: speaker lines and pseudo-words, all generated."""
    rng = random.Random(seed)
    names = ["ANNA", "BORIS", "CLEO", "DMITRI"]
    words = ["the", "and", "lord", "shall", "night", "sword", "crown", "love", "my", "thou"]
    parts, length = [], 0
    while length < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        parts.append(rng.choice(names) + ":\n" + line.capitalize() + rng.choice(".!?,") + "\n\n")
        length += len(parts[-1])
    return "".join(parts)[:n_chars]


def local_steps(state, corpus, steps: int = 1) -> list[tuple[float, float]]:
    """The single-process step, `steps` times on state: [(mean loss, gradient norm)]."""
    source = InProcessSource(state, corpus)
    config = state.config
    optimizer = RMSprop(state.square_avg, config.rho, config.eps, config.clip, weight_decay=config.weight_decay)
    try:
        return [apply_step(state, optimizer, source.gather(state, lambda: False),
                           source.params_out(state)) for _ in range(steps)]
    finally:
        optimizer.close()


def relative(a, b) -> float:
    return np.abs(a - b).max() / np.abs(b).max()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--layers", "2", "--hidden", "16", "--chunks", "6", "--seq-len", "20", "--dtype", "float64",
         "--checkpoint-every", "1"]


def env() -> dict:
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_script(script: str, *args, timeout: float = 120, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *map(str, args)],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def train(corpus: str, save_dir: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_script("train_local.py", "--corpus", corpus, "--save-dir", save_dir, "--no-progress",
                      *SMALL, *args, timeout=timeout)


def params_of(save_dir: str) -> np.ndarray:
    from model.checkpoint import load_state
    return load_state(os.path.join(save_dir, "checkpoint.npz")).params


def spawn(module: str, *args, log_path: str | None = None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_endpoint(path: str, process: subprocess.Popen, timeout: float = 30) -> str:
    def ready():
        if process.poll() is not None:
            raise AssertionError(f"coordinator exited early with {process.returncode}")
        return os.path.exists(path) and open(path).read().strip()
    return wait_for(ready, timeout, "the coordinator's endpoint")


def metrics(save_dir: str) -> list[dict]:
    path = os.path.join(save_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def last_step(save_dir: str) -> int:
    lines = metrics(save_dir)
    return lines[-1]["step"] if lines else 0


def stop_all(*processes, timeout: float = 10) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_coordinator(corpus, save_dir, steps, *extra, workers: int = 1):
    """A coordinator on a free loopback port, logging to save_dir: (process, endpoint). No random
    audits unless a test passes --audit-share (an honest run's bits do not depend on them)."""
    endpoint_file = os.path.join(save_dir, "endpoint")
    os.makedirs(save_dir, exist_ok=True)
    coordinator = spawn("coordinator", "--bind", "tcp://127.0.0.1:*", "--endpoint-file", endpoint_file,
                        "--corpus", corpus, "--save-dir", save_dir, "--steps", steps,
                        "--heartbeat", "0.2", "--liveness", "1.5", "--min-workers", workers,
                        "--audit-share", "0", *SMALL, *extra, log_path=os.path.join(save_dir, "coordinator.log"))
    return coordinator, read_endpoint(endpoint_file, coordinator)


def run_cluster(corpus, save_dir, steps, workers, coordinator_flags=(), worker_flags=(), timeout: float = 120):
    """A coordinator on a free loopback port and `workers` workers, until the run ends (exit 0)."""
    coordinator, endpoint = start_coordinator(corpus, save_dir, steps, *coordinator_flags, workers=workers)
    pool = [spawn("worker", "--connect", endpoint, *worker_flags, log_path=os.path.join(save_dir, f"worker{k}.log"))
            for k in range(workers)]
    try:
        assert coordinator.wait(timeout) == 0
    finally:
        stop_all(coordinator, *pool)


def start_cluster(corpus, save_dir, steps, workers, *extra):
    """A coordinator on a free loopback port and `workers` workers, each logging to save_dir."""
    coordinator, endpoint = start_coordinator(corpus, save_dir, steps, *extra, workers=workers)
    pool = [spawn("worker", "--connect", endpoint, "--name", f"w{k}",
                  log_path=os.path.join(save_dir, f"worker{k}.log")) for k in range(workers)]
    return coordinator, endpoint, pool


class Peer:
    """A hand-driven DEALER that speaks CLSTM/4 through protocol/ only: a minimal worker or
    client, for conformance, duplicates and hostile input."""

    def __init__(self, endpoint):
        import zmq
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.pieces: list[int] = []     # from the welcome

    def send(self, message_or_frames):
        frames = encode(message_or_frames) if isinstance(message_or_frames, Message) else message_or_frames
        self.socket.send_multipart(frames)

    def expect(self, cmd, timeout=20.0, skip=("heartbeat",)):
        """The next message other than `skip`; it must be `cmd`."""
        from protocol import decode
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.poll(50):
                message = decode(self.socket.recv_multipart())
                if message.cmd in skip:
                    continue
                if message.cmd != cmd:
                    raise AssertionError(f"expected {cmd}, got {message.cmd}: {message.fields}")
                if cmd == "welcome":
                    self.pieces = message["pieces"]
                return message
        raise AssertionError(f"no {cmd} within {timeout}s")

    def expect_work(self, skip=("heartbeat",)) -> tuple[Message, list[Message]]:
        """A `work` and the `params` pieces that follow it (SPEC.md 4.4)."""
        work = self.expect("work", skip=skip)
        pieces = []
        while True:
            piece = self.expect("params", skip=skip)
            assert piece["step"] == work["step"]
            assert piece["piece"] == len(pieces), "pieces come in ascending order"
            pieces.append(piece)
            if len(pieces) == len(self.pieces):
                return work, pieces

    def quiet_for(self, seconds, skip=("heartbeat",)) -> bool:
        """True if nothing but `skip` arrives for `seconds` (proving an absence takes a wait)."""
        from protocol import decode
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.socket.poll(50) and decode(self.socket.recv_multipart()).cmd not in skip:
                return False
        return True

    def close(self):
        self.socket.close()
        self.context.term()


# malformed CLSTM/4 frame sets, shared by the decode and live fuzz tests

def computed(computer, work: Message, params: list, grad_out=None) -> list[Message]:
    """What the project's worker answers to a work and its parameter pieces (arrays, or the
    `params` messages that carried them): `grad` pieces, then `push`."""
    incoming, out = computer.incoming(), []
    for piece, array in enumerate(params):
        assert incoming.put(piece, array.arrays["params"] if isinstance(array, Message) else array) is None
    computer.compute(work, incoming, out.append, grad_out)
    return out


def answer(server, item, computer, grad_out=None, **changes) -> tuple[Message, list[Message], Message]:
    """A worker's whole answer to the work a ParameterServer hands out for item (its fields
    changed by `changes`): (the work, its `grad` pieces, its `push`)."""
    sent = server.work_out(item).message
    work = Message("work", {**sent.fields, **changes}, sent.arrays)
    *grads, push = computed(computer, work, server.param_pieces(), grad_out)
    return work, grads, push


def contribution_of(push: Message, compute_s: float = 0.0):
    """What the coordinator makes of a push: its gradient comes from the `grad` pieces."""
    from model.training import Contribution
    return Contribution(push["loss"], None, push.arrays["h"], push.arrays["c"], compute_s)


def valid_push(dims: dict, token: int = 7, step: int = 0, chunks=(0,)) -> list[bytes]:
    """A push (zero states) whose gradient was never sent: refused if it would be accepted."""
    b, dtype = len(chunks), dims.get("float", "<f4")
    message = Message("push", {"token": token, "step": step, "chunks": list(chunks), "loss": 1.0, "compute_s": 0.1},
                      {"h": np.zeros((dims["L"], b, dims["H"]), dtype), "c": np.zeros((dims["L"], b, dims["H"]), dtype)})
    return [bytes(f) for f in encode(message)]


def valid_grad(dims: dict, token: int = 7, step: int = 0, chunks=(0,)) -> list[bytes]:
    """Piece 0 of a (zero) gradient."""
    message = Message("grad", {"token": token, "step": step, "chunks": list(chunks), "piece": 0, "prefix": False,
                               "mac": ""},
                      {"grad": np.zeros(dims["pieces"][0], dims.get("float", "<f4"))})
    return [bytes(f) for f in encode(message)]


_HOLE = "\x00hole"


def _deep(depth: int, kind: str) -> bytes:
    """msgpack bytes of a list (or map) nested `depth` deep around 1: too deep for msgpack's packer."""
    opener = b"\x91" if kind == "list" else b"\x81" + msgpack.packb("k")
    return opener * depth + msgpack.packb(1)


def hostile_values(rng: random.Random) -> list:
    """Values a field may be replaced by: msgpack bytes (deep nesting) or plain values."""
    return [_deep(rng.choice([5, 100, 1000, 3000]), rng.choice(["list", "map"])),
            2 ** 64 - 1, 2 ** 63, -1, -2 ** 63, float("nan"), float("inf"), -float("inf"), 1e308, -0.0,
            True, None, "", "x" * rng.randint(1000, 60_000), "tcp://*:5", [0] * rng.randint(100, 15_000),
            [[0] * 10] * 500, {str(k): k for k in range(64)}, {"cmd": "push"}, [["a", "<f4", [1]]] * 20,
            [2 ** 64 - 1], [-1], ["x"], [1.5], [[1, [2, [3]]]]]


def structural(rng: random.Random, good: list[bytes]) -> list[bytes]:
    """A valid frame set with one header field (or cmd, or the array list) replaced by a value of
    hostile_values: wrong types, huge and negative ints, NaN/inf, oversized lists and maps, deep
    nesting. The result may happen to be valid; decode must refuse it or accept it, never raise
    anything else."""
    header = msgpack.unpackb(good[1])
    name = rng.choice(sorted(header))
    value = rng.choice(hostile_values(rng))
    header[name] = _HOLE if isinstance(value, bytes) else value
    raw = msgpack.packb(header)
    if isinstance(value, bytes):
        raw = raw.replace(msgpack.packb(_HOLE), value)
    return [good[0], raw, *good[2:]]


def malformed(rng: random.Random, good: list[bytes], dims: dict) -> list[bytes]:
    """One frame set that decode must refuse: 9 kinds, chosen by the generator."""
    from protocol import ProtocolError, decode
    kind = rng.randrange(9)
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
        frames[0] = rng.choice([b"CLSTM/1", b"CLSTM/3", b"", b"HTTP/1.1", b"CLSTM/4 "])
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
        grad = np.zeros(dims["pieces"][0], dims.get("float", "<f4"))
        grad[rng.randrange(grad.size)] = rng.choice([np.nan, np.inf, -np.inf])
        frames[2] = grad.tobytes()
    elif kind == 7:                                      # oversized msgpack header
        frames[1] = msgpack.packb({"cmd": "push", "pad": "x" * rng.randint(65 * 1024, 80 * 1024)})
    else:                                                # one field of hostile structure
        while True:
            frames = structural(rng, [bytes(f) for f in good])
            try:
                decode(frames, dims)
            except ProtocolError:
                break
    return [bytes(f) for f in frames]
