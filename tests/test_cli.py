"""The user-facing scripts: help texts and error paths (one line on stderr, exit 2, no traceback)."""
import hashlib
import subprocess
import sys

import pytest

import helpers

SCRIPTS = ["fetch_data.py", "sample.py", "evaluate.py", "train_local.py", "bench.py", "export.py",
           "plot.py", "visualize.py", "make_keys.py"]
MODULES = ["coordinator", "worker"]


def undocumented_options(help_text: str) -> list[str]:
    """Options in an argparse help listing with no help text (on their line or the next)."""
    lines = help_text.splitlines()
    missing = []
    for k, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped.startswith("--") or stripped.startswith("--help") or indent > 4:
            continue                     # an option line is indented 2; wrapped help text more
        described = "  " in stripped
        following = lines[k + 1] if k + 1 < len(lines) else ""
        if not described and following.startswith(" " * 10) and not following.strip().startswith("-"):
            described = True
        if not described:
            missing.append(stripped.split()[0])
    return missing


@pytest.mark.parametrize("command", SCRIPTS + MODULES)
def test_every_flag_has_help(command):
    if command in MODULES:
        result = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True,
                                timeout=60, env=helpers.env())
    else:
        result = helpers.run_script(command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout
    options = [line for line in result.stdout.splitlines() if line.startswith("  --")]
    assert options
    assert undocumented_options(result.stdout) == []


def test_the_help_checker_finds_an_undocumented_flag():
    listing = "options:\n  -h, --help  show this\n  --seed SEED\n  --lr LR     learning rate\n"
    assert undocumented_options(listing) == ["--seed"]


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
    (["--temperature", "0"], "--temperature: must be a finite number > 0"),
    (["--temperature", "nan"], "--temperature: must be a finite number > 0"),
    (["--temperature", "inf"], "--temperature: must be a finite number > 0"),
])
def test_sample_errors(checkpoint, args, message):
    if "--checkpoint" not in args:
        args = ["--checkpoint", checkpoint, *args]
    result = helpers.run_script("sample.py", *args, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sample_and_evaluate_work(checkpoint, tmp_path):
    result = helpers.run_script("sample.py", "--checkpoint", checkpoint, "--length", 25, "--seed", 4)
    assert len(result.stdout) == 27                    # the echoed prime "\n", 25 characters, "\n"
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


def test_the_project_builds_as_a_package(tmp_path):
    """`pip install .` works: the wheel holds the four packages, the spec and both commands."""
    pytest.importorskip("setuptools")
    import zipfile
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--wheel-dir", str(tmp_path), helpers.ROOT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("charlstm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("model", "protocol", "coordinator", "worker"):
        assert f"{package}/__init__.py" in names
    assert "protocol/SPEC.md" in names and not any(n.startswith(("tests/", "scripts/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "charlstm-worker = worker.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
