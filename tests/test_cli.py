"""The user-facing scripts: help texts and error paths (one line on stderr, exit 2, no traceback)."""
import hashlib

import pytest

import helpers

SCRIPTS = ["fetch_data.py", "sample.py", "evaluate.py", "train_local.py", "bench.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_flags(script):
    result = helpers.run_script(script, "--help")
    assert "usage:" in result.stdout and "--" in result.stdout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from helpers import generated_text
    folder = tmp_path_factory.mktemp("ckpt")
    (folder / "corpus.txt").write_text(generated_text(3000), encoding="utf-8")
    helpers.train(str(folder / "corpus.txt"), str(folder), "--steps", 1, "--workers", 0)
    return str(folder / "checkpoint.npz")


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/x.npz"], "does not exist"),
    (["--prime", "é"], "not in the model's vocabulary"),
    (["--temperature", "0"], "--temperature must be > 0"),
])
def test_sample_errors(checkpoint, args, message):
    if "--checkpoint" not in args:
        args = ["--checkpoint", checkpoint, *args]
    result = helpers.run_script("sample.py", *args, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sample_and_evaluate_work(checkpoint, tmp_path):
    result = helpers.run_script("sample.py", "--checkpoint", checkpoint, "--length", 25, "--seed", 4)
    assert len(result.stdout) == 26
    text = tmp_path / "t.txt"
    text.write_text("ANNA:\nThe lord and the crown.\n", encoding="utf-8")
    import json
    figures = json.loads(helpers.run_script("evaluate.py", "--checkpoint", checkpoint, "--text", text,
                                          "--json").stdout)
    assert figures["chars"] == len(text.read_text()) - 1 and figures["nats_per_char"] > 0


def test_corrupt_checkpoint_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really")
    result = helpers.run_script("sample.py", "--checkpoint", bad, check=False)
    assert result.returncode == 2 and "bad.npz is corrupt or truncated" in result.stderr


def test_fetch_data_checks_the_hash(tmp_path):
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not shakespeare")
    out = tmp_path / "out.txt"
    result = helpers.run_script("fetch_data.py", "--from", wrong, "--out", out, check=False)
    assert result.returncode == 2 and "does not match" in result.stderr and not out.exists()
    assert hashlib.sha256(b"not shakespeare").hexdigest() in result.stderr


def test_fetch_data_offline_message(tmp_path):
    result = helpers.run_script("fetch_data.py", "--url", "http://127.0.0.1:9/none", "--out",
                              tmp_path / "o.txt", check=False)
    assert result.returncode == 2 and "--from PATH" in result.stderr


def test_train_local_missing_corpus(tmp_path):
    result = helpers.run_script("train_local.py", "--corpus", tmp_path / "none.txt", "--save-dir", tmp_path,
                              "--workers", "0", check=False)
    assert result.returncode == 2 and "fetch_data.py" in result.stderr
