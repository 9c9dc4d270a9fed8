import pytest

import helpers
from helpers import generated_text


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A 20,000-character generated corpus file for the tests that start real processes."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(generated_text(20_000, seed=3), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A 3,000-character generated corpus, for the command-line tests."""
    path = tmp_path_factory.mktemp("c") / "corpus.txt"
    path.write_text(generated_text(3000), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_corpus):
    """A one-step checkpoint of the small model on small_corpus."""
    folder = tmp_path_factory.mktemp("ckpt")
    helpers.train(small_corpus, str(folder), "--steps", 1, "--workers", 0)
    return str(folder / "checkpoint.npz")
