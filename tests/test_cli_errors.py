"""What a new user runs into: each mistake ends in one `error:` line and exit 2 (no traceback),
and the normal ways to stop or read output behave."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import helpers
from helpers import generated_text

pytestmark = pytest.mark.timeout(120)


def one_error_line(result, *fragments) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def module(name, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", name, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=helpers.env())


def test_an_endpoint_without_a_scheme(checkpoint, small_corpus, tmp_path):
    one_error_line(helpers.run_script("sample.py", "--coordinator", "localhost:5555", check=False),
                   "tcp://HOST:PORT")
    one_error_line(module("worker", "--connect", "localhost:5599"), "tcp://HOST:PORT")
    one_error_line(module("coordinator", "--bind", "127.0.0.1:5599", "--corpus", small_corpus,
                          "--save-dir", tmp_path, *helpers.SMALL), "tcp://HOST:PORT")


def test_a_port_that_is_taken(small_corpus, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_error_line(module("coordinator", "--bind", f"tcp://127.0.0.1:{port}", "--corpus", small_corpus,
                              "--save-dir", tmp_path, *helpers.SMALL), "already in use")


def test_the_worker_says_at_once_where_it_is_connecting(tmp_path):
    log = str(tmp_path / "worker.log")
    worker = helpers.spawn("worker", "--connect", "tcp://127.0.0.1:9", log_path=log)
    try:
        helpers.wait_for(lambda: "connecting to the coordinator at tcp://127.0.0.1:9" in open(log).read(),
                         10, "the worker's first line")
    finally:
        helpers.stop_all(worker)


@pytest.mark.parametrize("flags, fragment", [
    (["--steps", "-1"], "--steps: must be >= 0"),
    (["--epochs", "nan"], "--epochs"),
    (["--lr", "inf"], "--lr: must be a finite number"),
    (["--epoch", "3"], "unrecognized arguments: --epoch 3"),
])
def test_training_flags(small_corpus, tmp_path, flags, fragment):
    one_error_line(helpers.run_script("train_local.py", "--corpus", small_corpus, "--save-dir", tmp_path,
                                      *flags, check=False), fragment)


def test_a_binary_corpus_is_named(tmp_path):
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 20)
    one_error_line(helpers.run_script("train_local.py", "--corpus", binary, "--save-dir", tmp_path / "s",
                                      "--workers", 0, check=False), str(binary), "not UTF-8")


def test_a_file_as_save_dir_stops_before_any_process_starts(small_corpus):
    readme = os.path.join(helpers.ROOT, "README.md")
    result = helpers.run_script("train_local.py", "--corpus", small_corpus, "--save-dir", readme,
                                "--workers", 2, check=False)
    one_error_line(result, "is a file, not a folder")
    assert "listening" not in result.stdout + result.stderr


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    one_error_line(helpers.run_script("sample.py", "--checkpoint", os.path.join(helpers.ROOT, "README.md"),
                                      check=False), "is not a checkpoint or model file of this project")


def test_sampling_into_a_closed_pipe_exits_quietly(checkpoint):
    process = subprocess.Popen([sys.executable, os.path.join(helpers.ROOT, "scripts", "sample.py"),
                                "--checkpoint", checkpoint, "--length", "200000"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=helpers.env())
    process.stdout.read(10)
    process.stdout.close()                  # what `| head -c 10` does
    assert process.wait(60) == 0
    assert "error" not in process.stderr.read().decode()


def test_the_prime_is_echoed_unless_asked_not_to(checkpoint):
    corpus_prime = "ANNA:"
    echoed = helpers.run_script("sample.py", "--checkpoint", checkpoint, "--prime", corpus_prime, "--length", 5)
    assert echoed.stdout.startswith(corpus_prime) and len(echoed.stdout) == len(corpus_prime) + 6
    quiet = helpers.run_script("sample.py", "--checkpoint", checkpoint, "--prime", corpus_prime,
                               "--length", 5, "--no-echo")
    assert len(quiet.stdout) == 6
    assert f"model: {checkpoint}, step 1" in echoed.stderr


def test_sample_prefers_the_user_s_own_checkpoint(monkeypatch, tmp_path, checkpoint):
    import _load
    monkeypatch.setattr(_load, "LATEST", checkpoint)
    monkeypatch.setattr(_load, "SHIPPED", str(tmp_path / "shipped.npz"))
    args = type("Args", (), {"coordinator": None, "checkpoint": None})()
    assert _load.load_from_args(args).source == f"model: {checkpoint}, step 1"
    monkeypatch.setattr(_load, "LATEST", str(tmp_path / "none.npz"))
    monkeypatch.setattr(_load, "SHIPPED", checkpoint)
    assert "the shipped model" in _load.load_from_args(args).source


def test_plot_svg_goes_into_the_save_dir(checkpoint):
    save_dir = os.path.dirname(checkpoint)
    helpers.run_script("plot.py", "--save-dir", save_dir, "--svg", "chart.svg")
    assert os.path.exists(os.path.join(save_dir, "chart.svg"))


def test_ctrl_c_is_named_and_lines_never_run_together(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(20_000), encoding="utf-8")
    save_dir = str(tmp_path / "run")
    train = subprocess.Popen([sys.executable, os.path.join(helpers.ROOT, "scripts", "train_local.py"),
                              "--corpus", str(corpus), "--save-dir", save_dir, "--workers", "2", "--no-progress",
                              *helpers.SMALL, "--steps", "100000"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=helpers.env())
    try:
        helpers.wait_for(lambda: helpers.last_step(save_dir) >= 3, 60, "a few steps")
        train.send_signal(signal.SIGINT)
        output, _ = train.communicate(timeout=60)
    finally:
        if train.poll() is None:
            train.kill()
    assert train.returncode == 0
    assert "SIGINT: writing checkpoint" in output and "SIGTERM" not in output
    known = ("step ", "worker ", "config ", "corpus ", "coordinator ", "validation ", "stopped by",
             "0 invalid", "resuming", "waiting for workers")
    for line in output.splitlines():
        assert line.startswith(known) or line.startswith("SIGINT"), line
        assert line.count("worker local-") <= 1, line


def test_the_progress_bar_shows_no_eta_before_it_knows_one(capsys):
    from coordinator.launcher import Progress
    progress = Progress(False)
    progress.enabled = True
    progress.update({"step": 5, "target_step": 100, "epoch": 0.1, "loss": 2.0, "chars_per_s": 10.0})
    assert "ETA --:--:--" in capsys.readouterr().err
    time.sleep(0.01)
    progress.update({"step": 6, "target_step": 100, "epoch": 0.1, "loss": 2.0, "chars_per_s": 10.0})
    assert "ETA 00:00:" in capsys.readouterr().err
