import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A 20,000-character generated corpus file for the tests that start real processes."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(generated_text(20_000, seed=3), encoding="utf-8")
    return str(path)
