"""Checkpoints: one .npz (no pickle), written atomically, with a short history to fall back on.

Keys: `meta` (uint8 UTF-8 JSON), `param/<name>`, `rmsprop/<name>`, `average/<name>` (with
Config.ema_decay > 0), `chunks/h`, `chunks/c`,
`chunks/step_in_epoch`. A model-only file (format "charlstm-model/1") has `meta` and
`param/*` alone and is accepted wherever a model is loaded for sampling or evaluation.
"""
from __future__ import annotations

import json
import os
import re
import zipfile

import numpy as np

from .config import Config
from .params import ParamLayout
from .training import TrainState

FORMAT = "charlstm/1"
MODEL_FORMAT = "charlstm-model/1"
HISTORY_DIR = "history"
HISTORY_NAME = re.compile(r"^checkpoint-(\d{9})\.npz$")     # history/checkpoint-<step, 9 digits>.npz


def history_name(step: int) -> str:
    return f"checkpoint-{step:09d}.npz"


def history_steps(save_dir: str) -> dict[int, str]:
    """step -> path of each checkpoint kept in save_dir's history/."""
    history = os.path.join(save_dir, HISTORY_DIR)
    names = os.listdir(history) if os.path.isdir(history) else []
    return {int(m.group(1)): os.path.join(history, n) for n in names for m in [HISTORY_NAME.match(n)] if m}


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or inconsistent; the message names the file.
    problem is what is wrong, advice (may be empty) what the user can do about it."""

    def __init__(self, problem: str, advice: str = ""):
        super().__init__(f"{problem}; {advice}" if advice else problem)
        self.problem = problem


def _meta_array(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def state_meta(state: TrainState) -> dict:
    meta = dict(state.config.to_dict())
    meta.update(state.extra_meta)
    meta.update(format=FORMAT, vocab=state.vocab, step=state.step, epoch=state.epoch,
                steps_per_epoch=state.steps_per_epoch, corpus_sha256=state.corpus_sha256)
    return meta


def state_arrays(state: TrainState) -> dict[str, np.ndarray]:
    arrays = {"meta": _meta_array(state_meta(state))}
    for name, view in state.layout.views(state.params).items():
        arrays[f"param/{name}"] = view
    for name, view in state.layout.views(state.square_avg).items():
        arrays[f"rmsprop/{name}"] = view
    if state.average is not None:
        for name, view in state.layout.views(state.average).items():
            arrays[f"average/{name}"] = view
    arrays["chunks/h"] = state.chunk_h
    arrays["chunks/c"] = state.chunk_c
    arrays["chunks/step_in_epoch"] = np.array(state.step_in_epoch, dtype=np.int64)
    return arrays


def write_npz_atomic(path: str, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: a reader sees the
    old file or the new one, never a torn one, whatever dies when."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temp, "wb") as handle:
            (np.savez_compressed if compressed else np.savez)(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: str, state: TrainState, keep: int = 3) -> None:
    """Writes path atomically and keeps hard links to the last `keep` checkpoints in history/."""
    write_npz_atomic(path, state_arrays(state))
    if keep <= 0:
        return
    history = os.path.join(os.path.dirname(os.path.abspath(path)), HISTORY_DIR)
    os.makedirs(history, exist_ok=True)
    link = os.path.join(history, history_name(state.step))
    if os.path.exists(link):
        os.unlink(link)
    os.link(path, link)
    # by step (the zero-padded name), never the link just made
    older = sorted(f for f in os.listdir(history) if f.endswith(".npz") and f != os.path.basename(link))
    for old in older[:max(0, len(older) - keep + 1)]:
        os.unlink(os.path.join(history, old))


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz, loaded eagerly so corruption shows here, not later."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint", "pass the .npz file inside it")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, zipfile.BadZipFile) as error:
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
        if not is_zip:
            raise CheckpointError(f"{path} is not a checkpoint or model file of this project (not an "
                                  f".npz archive); pass a file written by training or export.py") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error})",
                              f"delete it or restore an older one from {HISTORY_DIR}/") from None
    except (OSError, EOFError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error})",
                              f"delete it or restore an older one from {HISTORY_DIR}/") from None
    if "meta" not in arrays:
        raise CheckpointError(f"checkpoint {path} has no 'meta' entry; it is not a charlstm file")
    try:
        arrays["meta"] = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} has unreadable meta ({error})") from None
    return arrays


def read_meta(path: str) -> dict:
    """A checkpoint's meta alone, without reading its arrays; CheckpointError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(archive["meta"].tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable ({error})") from None


def _params_from(arrays: dict, meta: dict, prefix: str, path: str, dtype) -> np.ndarray:
    layout = ParamLayout.for_model(len(meta["vocab"]), meta["layers"], meta["hidden"])
    try:
        return layout.flatten({n: arrays[f"{prefix}/{n}"] for n in layout.names}, dtype)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from None


def load_model(path: str) -> tuple[dict, np.ndarray]:
    """(meta, flat params) from a checkpoint or a model-only export, in float32 or the file's dtype."""
    arrays = read_npz(path)
    meta = arrays["meta"]
    if meta.get("format") not in (FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, "
                              f"expected {FORMAT!r} or {MODEL_FORMAT!r}")
    dtype = np.float64 if meta.get("dtype") == "float64" else np.float32
    return meta, _params_from(arrays, meta, "param", path, dtype)


def load_state(path: str) -> TrainState:
    arrays = read_npz(path)
    meta = arrays["meta"]
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint (format {meta.get('format')!r}); "
                              f"a model-only export cannot be resumed")
    config = Config.from_dict(meta)
    dtype = np.dtype(config.dtype)
    params = _params_from(arrays, meta, "param", path, dtype)
    square_avg = _params_from(arrays, meta, "rmsprop", path, dtype)
    average = _params_from(arrays, meta, "average", path, dtype) if "average/head.b" in arrays else None
    expected = (config.layers, config.chunks, config.hidden)
    chunk_h, chunk_c = arrays.get("chunks/h"), arrays.get("chunks/c")
    if chunk_h is None or chunk_c is None or chunk_h.shape != expected or chunk_c.shape != expected:
        raise CheckpointError(f"checkpoint {path}: chunk states missing or not of shape {expected}")
    known = set(Config.__dataclass_fields__) | {"format", "vocab", "step", "epoch",
                                                 "steps_per_epoch", "corpus_sha256"}
    return TrainState(config=config, vocab=meta["vocab"], corpus_sha256=meta["corpus_sha256"],
                      steps_per_epoch=int(meta["steps_per_epoch"]), params=params,
                      square_avg=square_avg, average=average, chunk_h=chunk_h.astype(dtype),
                      chunk_c=chunk_c.astype(dtype), step=int(meta["step"]),
                      extra_meta={k: v for k, v in meta.items() if k not in known})


def load_latest_state(save_dir: str, log=print) -> tuple[TrainState | None, str | None]:
    """(state, the file it came from) of the newest readable checkpoint in save_dir:
    checkpoint.npz, else the newest good one in history/ (logging why it fell back). (None,
    None) when there is none at all."""
    main = os.path.join(save_dir, "checkpoint.npz")
    history = os.path.join(save_dir, HISTORY_DIR)
    if os.path.isdir(save_dir):
        for name in os.listdir(save_dir):     # left by a writer killed mid-write; never renamed
            if ".npz.tmp-" in name:
                os.unlink(os.path.join(save_dir, name))
                log(f"removed {name}, a checkpoint write that never finished")
    candidates = [main] if os.path.exists(main) else []
    if os.path.isdir(history):
        candidates += [os.path.join(history, f) for f in
                       sorted(os.listdir(history), reverse=True) if f.endswith(".npz")]
    for path in candidates:
        try:
            return load_state(path), path
        except CheckpointError as error:
            log(f"warning: {error.problem}; trying the next older checkpoint")
    if candidates:
        raise CheckpointError(f"no readable checkpoint in {save_dir} (tried {len(candidates)})",
                              "start afresh with --fresh (the old files are kept under previous-runs/)")
    return None, None


def model_arrays(meta: dict, params: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """A model-only file's arrays (parameters and meta, no optimizer state) in float16/32/64."""
    layout = ParamLayout.for_model(len(meta["vocab"]), meta["layers"], meta["hidden"])
    export_meta = {k: v for k, v in meta.items() if k != "format"}
    export_meta.update(format=MODEL_FORMAT, dtype="float64" if dtype == "float64" else "float32",
                       stored_dtype=dtype)
    arrays = {"meta": _meta_array(export_meta)}
    for name, view in layout.views(params).items():
        arrays[f"param/{name}"] = view.astype(dtype)
    return arrays



def export_model(source: str, out: str, dtype: str = "float16") -> dict:
    """Writes a model-only file from a checkpoint or best.npz; returns the source's meta."""
    meta, params = load_model(source)
    write_npz_atomic(out, model_arrays(meta, params, dtype), compressed=True)
    return meta
