"""A new user's mistakes, round two: each ends in one `error:` line and exit 2, and nothing (keys,
checkpoints) is overwritten without a word."""
import os
import signal
import stat
import subprocess
import sys

import pytest

import helpers
from helpers import generated_text
from test_cli_errors import module, one_error_line

pytestmark = pytest.mark.timeout(120)


def test_make_keys_again_keeps_every_pair_and_keeps_them_private(tmp_path):
    keys = str(tmp_path / "keys")
    helpers.run_script("make_keys.py", keys, "--clients", "worker", "sampler")
    before = {name: open(os.path.join(keys, "clients", name), "rb").read()
              for name in os.listdir(os.path.join(keys, "clients"))}
    coordinator = open(os.path.join(keys, "coordinator.key_secret"), "rb").read()
    again = helpers.run_script("make_keys.py", keys, "--clients", "worker", "laptop")
    assert "created laptop" in again.stdout and "kept the existing pairs of worker" in again.stdout
    for name, content in before.items():
        assert open(os.path.join(keys, "clients", name), "rb").read() == content, name
    assert open(os.path.join(keys, "coordinator.key_secret"), "rb").read() == coordinator
    assert sorted(os.listdir(os.path.join(keys, "authorized"))) == ["laptop.key", "sampler.key", "worker.key"]
    for folder in ("", "clients", "authorized"):
        assert stat.S_IMODE(os.stat(os.path.join(keys, folder)).st_mode) == 0o700
    for root, _, files in os.walk(keys):
        for name in files:
            if name.endswith(".key_secret"):
                assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600
    for bad in ("../evil", "a/b", "", "-x", ".."):
        one_error_line(helpers.run_script("make_keys.py", keys, f"--clients={bad}", check=False), "client names")
    assert not os.path.exists(tmp_path / "evil.key")


def test_export_never_replaces_a_training_checkpoint_or_its_source(checkpoint, tmp_path):
    before = open(checkpoint, "rb").read()
    one_error_line(helpers.run_script("export.py", "--checkpoint", checkpoint, "--out", checkpoint, check=False),
                   "is the file being exported")
    other = str(tmp_path / "other.npz")
    helpers.train(helpers.ROOT + "/README.md", str(tmp_path / "run"), "--steps", 0, "--workers", 0)
    training = str(tmp_path / "run" / "checkpoint.npz")
    one_error_line(helpers.run_script("export.py", "--checkpoint", checkpoint, "--out", training, check=False),
                   "is a training checkpoint")
    assert open(checkpoint, "rb").read() == before
    helpers.run_script("export.py", "--checkpoint", checkpoint, "--out", other)
    replaced = helpers.run_script("export.py", "--checkpoint", checkpoint, "--out", other)
    assert f"replacing {other}" in replaced.stderr


@pytest.mark.parametrize("command, flags, fragment", [
    ("train_local.py", ["--checkpoint-every", "0"], "--checkpoint-every: must be >= 1"),
    ("train_local.py", ["--blas-threads", "0"], "--blas-threads: must be >= 1"),
    ("train_local.py", ["--plot-every", "-1"], "--plot-every: must be >= 0"),
    ("train_local.py", ["--liveness", "-1"], "--liveness: must be > 0"),
    ("train_local.py", ["--workers", "-1"], "--workers: must be >= 0"),
    ("coordinator", ["--liveness", "0"], "--liveness: must be > 0"),
    ("coordinator", ["--heartbeat", "0"], "--heartbeat: must be > 0"),
    ("coordinator", ["--min-workers", "0"], "--min-workers: must be >= 1"),
    ("coordinator", ["--max-message-mb", "0"], "--max-message-mb: must be > 0"),
    ("coordinator", ["--max-message-mb", "0.01"], "is below this run's largest message"),
    ("coordinator", ["--bind", "tcp://127.0.0.1:99999"], "port '99999' must be a number from 1 to 65535"),
    ("worker", ["--backoff-max", "-1"], "--backoff-max: must be > 0"),
    ("worker", ["--liveness", "0"], "--liveness: must be > 0"),
    ("worker", ["--connect", "tcp://127.0.0.1:99999"], "port '99999' must be a number from 1 to 65535"),
    ("sample.py", ["--pull-timeout", "-1"], "--pull-timeout: must be > 0"),
    ("sample.py", ["--seed", "-5"], "--seed: must be >= 0"),
    ("sample.py", ["--curve-keys", "keys"], "--curve-keys only applies with --coordinator"),
    ("sample.py", ["--coordinator", "tcp://127.0.0.1:0"], "port '0' must be"),
    ("sample.py", ["--checkpoint", "/tmp"], "is a folder, not a checkpoint"),
    ("visualize.py", ["--find", "--top", "0"], "--top: must be >= 1"),
    ("plot.py", ["--svg", "/tmp"], "cannot write --svg /tmp"),
])
def test_every_checked_flag_is_one_error_line(small_corpus, checkpoint, tmp_path, command, flags, fragment):
    if command in ("coordinator", "worker"):
        training = ["--corpus", small_corpus, "--save-dir", tmp_path, *helpers.SMALL] if command == "coordinator" else []
        result = module(command, *training, *flags)
    elif command == "train_local.py":
        result = helpers.run_script(command, "--corpus", small_corpus, "--save-dir", tmp_path, *flags, check=False)
    elif command == "plot.py":
        result = helpers.run_script(command, "--save-dir", os.path.dirname(checkpoint), *flags, check=False)
    else:
        model = [] if "--checkpoint" in flags or "--coordinator" in flags else ["--checkpoint", checkpoint]
        result = helpers.run_script(command, *model, *flags, check=False)
    one_error_line(result, fragment)
    assert not result.stdout.strip() or command == "plot.py", "nothing is printed before the error"


def test_files_that_cannot_be_used_are_named(small_corpus, checkpoint, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_error_line(helpers.run_script("train_local.py", "--corpus", empty, "--save-dir", tmp_path / "s",
                                      "--workers", 0, check=False), f"corpus {empty} is empty")
    one_error_line(helpers.run_script("visualize.py", "--checkpoint", checkpoint, "--text", empty, check=False),
                   f"text file {empty} is empty")
    for save_dir in ("/proc", "/proc/charlstm"):
        result = helpers.run_script("train_local.py", "--corpus", small_corpus, "--save-dir", save_dir,
                                    "--workers", 2, *helpers.SMALL, check=False)
        one_error_line(result, f"cannot write to --save-dir {save_dir}")
        assert "step" not in result.stdout + result.stderr


def test_more_workers_than_chunks_start_one_per_chunk(small_corpus, tmp_path):
    result = helpers.run_script("train_local.py", "--corpus", small_corpus, "--save-dir", tmp_path, "--no-progress",
                                "--workers", 1000, *helpers.SMALL, "--chunks", "3", "--steps", 1)
    assert "--workers 1000: the run has 3 chunks, so 3 workers start" in result.stderr
    assert helpers.metrics(str(tmp_path))[-1]["workers"] == 3


def test_in_process_training_into_a_closed_pipe_still_checkpoints(small_corpus, tmp_path):
    save_dir = str(tmp_path / "run")
    shell = (f"{sys.executable} {os.path.join(helpers.ROOT, 'scripts', 'train_local.py')} --corpus {small_corpus} "
             f"--save-dir {save_dir} --workers 0 --no-progress {' '.join(helpers.SMALL)} --steps 5 2>&1 | head -3")
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60, env=helpers.env())
    assert "Traceback" not in result.stdout + result.stderr
    from model.checkpoint import load_state
    assert load_state(os.path.join(save_dir, "checkpoint.npz")).step == helpers.last_step(save_dir) >= 1


def test_long_reads_of_a_text_say_how_far_they_got_and_stop_quietly(checkpoint, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(generated_text(5000), encoding="utf-8")
    evaluated = helpers.run_script("evaluate.py", "--checkpoint", checkpoint, "--text", text)
    assert "evaluating, " in evaluated.stderr and "of 4,999 characters (100 %)" in evaluated.stderr
    out = tmp_path / "neurons"
    out.mkdir()
    (out / "layer9_neuron99.html").write_text("an old page")
    found = helpers.run_script("visualize.py", "--checkpoint", checkpoint, "--text", text, "--find", "--out", out)
    assert f"model: {checkpoint}" in found.stderr and "scoring every neuron" in found.stderr
    assert "removed 1 neuron pages of an earlier --find" in found.stderr
    assert not (out / "layer9_neuron99.html").exists()
    long_text = tmp_path / "long.txt"
    long_text.write_text(generated_text(3_000_000), encoding="utf-8")
    for script, extra in (("evaluate.py", []), ("visualize.py", ["--find", "--out", out])):
        process = subprocess.Popen([sys.executable, os.path.join(helpers.ROOT, "scripts", script), "--checkpoint",
                                    checkpoint, "--text", str(long_text), *map(str, extra)], env=helpers.env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        helpers.wait_for(lambda: process.poll() is not None or os.path.getsize(long_text) and
                         _started(process), 30, f"{script} to start")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130 and "Traceback" not in stderr and "interrupted" in stderr, stderr


def _started(process) -> bool:
    """The script is past its imports (it said which model it uses)."""
    import select
    return bool(select.select([process.stderr], [], [], 0)[0])


def test_a_recipe_exports_only_its_own_run(tmp_path, small_corpus):
    """A recipe's run writes its export; the same recipe with a flag over it, or resuming a
    checkpoint trained otherwise, trains as asked but leaves the export alone and says why."""
    import json
    out = tmp_path / "shipped.npz"
    flags = dict(corpus=str(small_corpus), save_dir=str(tmp_path / "run"), workers=0, steps=2, layers=2,
                 hidden=16, chunks=6, seq_len=20, dtype="float64", val_fraction=0.2)
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"flags": flags, "export": str(out)}))

    over = helpers.run_script("train_local.py", "--recipe", recipe, "--no-progress", "--dropout", "0.1")
    assert not out.exists()
    assert f"not writing {out}" in over.stderr and "--dropout 0.1 (recipe: None)" in over.stderr, over.stderr
    # the flag is gone, but the checkpoint keeps its dropout: still not the recipe's run
    again = helpers.run_script("train_local.py", "--recipe", recipe, "--no-progress", "--steps", "2")
    assert not out.exists() and "checkpoint dropout 0.1 (recipe: 0.0)" in again.stderr, again.stderr

    plain = helpers.run_script("train_local.py", "--recipe", recipe, "--no-progress", "--fresh")
    assert out.exists() and f"wrote {out}" in plain.stderr, plain.stderr
