"""A save-dir's ownership and its runs: one writer at a time (a lock), and what --fresh does with
the run that was there before (archived, never deleted); and that a run's paths can be used."""
from __future__ import annotations

import fcntl
import os
import tempfile
import time

LOCK_FILE = ".lock"
ARCHIVE_DIR = "previous-runs"
# What one run writes into its save-dir; shipped or user files beside them are never moved.
RUN_FILES = ("checkpoint.npz", "history", "metrics.jsonl", "best.npz", "curves.html")


class SaveDirBusy(ValueError):
    """Another live process writes this save-dir."""


class SaveDirLock:
    """An exclusive flock on <save-dir>/.lock, held by the process that writes the run's
    checkpoints (the coordinator, or the in-process run) until release(). The kernel drops it
    when that process dies, so a stale lock is simply taken over (and said so)."""

    def __init__(self, save_dir: str, log=print):
        try:
            os.makedirs(save_dir, exist_ok=True)
            path = os.path.join(save_dir, LOCK_FILE)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ValueError(f"cannot write to --save-dir {save_dir} ({error.strerror}); choose a "
                             f"folder you can write to") from None
        holder = os.pread(self.fd, 64, 0).decode("ascii", "replace").strip()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SaveDirBusy(f"--save-dir {save_dir} is in use by another run (pid {holder or '?'}); "
                              f"stop it, or choose another --save-dir") from None
        if holder.isdigit() and int(holder) != os.getpid():
            log(f"took over the lock of {save_dir} from pid {holder}, which is no longer running")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def archive_previous_run(save_dir: str, log=print) -> str | None:
    """Moves the files of the run in save_dir (RUN_FILES) into save_dir/previous-runs/<UTC time>/
    and says so; returns that folder, or None when there was nothing to move."""
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(save_dir, name))]
    if not present:
        return None
    archive = os.path.join(save_dir, ARCHIVE_DIR, time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    suffix, candidate = 1, archive
    while os.path.exists(candidate):
        suffix, candidate = suffix + 1, f"{archive}-{suffix}"
    os.makedirs(candidate)
    for name in present:
        os.replace(os.path.join(save_dir, name), os.path.join(candidate, name))
    log(f"--fresh: moved the previous run's {', '.join(present)} to {candidate}")
    return candidate


def check_paths(corpus_path: str, save_dir: str) -> None:
    """The run's files can be read and written; ValueError (one line) if not."""
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise ValueError(f"--save-dir {save_dir} is a file, not a folder; choose a folder for "
                         f"checkpoints and metrics")
    try:                # a probe, before any step is computed: root passes os.access even on /proc
        os.makedirs(save_dir, exist_ok=True)
        probe, probe_path = tempfile.mkstemp(prefix=".probe-", dir=save_dir)
        os.close(probe)
        os.unlink(probe_path)
    except OSError as error:
        raise ValueError(f"cannot write to --save-dir {save_dir} ({error.strerror}); choose a folder "
                         f"you can write to") from None
    if not os.path.isfile(corpus_path):
        what = "is a directory" if os.path.isdir(corpus_path) else "not found"
        raise ValueError(f"corpus {corpus_path} {what}; run `python scripts/fetch_data.py` or pass "
                         f"--corpus PATH")
