import pytest

from helpers import generated_text


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A 20,000-character generated corpus file for the tests that start real processes."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(generated_text(20_000, seed=3), encoding="utf-8")
    return str(path)
