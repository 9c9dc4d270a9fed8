"""Vocabulary, train/validation split and sharding of the training text into chunks."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .config import Config


def build_vocab(text: str) -> str:
    """The sorted set of distinct characters; a character's index is its position here."""
    return "".join(sorted(set(text)))


def encode(text: str, vocab: str) -> np.ndarray:
    """Text -> int32 indices; raises ValueError naming any characters outside the vocabulary."""
    lookup = {ch: i for i, ch in enumerate(vocab)}
    missing = sorted(set(text) - lookup.keys())
    if missing:
        raise ValueError("characters not in the model's vocabulary: "
                         + ", ".join(repr(ch) for ch in missing[:20]))
    return np.fromiter((lookup[ch] for ch in text), dtype=np.int32, count=len(text))


def decode(indices, vocab: str) -> str:
    return "".join(vocab[int(i)] for i in indices)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_point(n_chars: int, val_fraction: float) -> int:
    return int(n_chars * (1 - val_fraction))


def resolve_chunk_len(train_len: int, chunks: int, seq_len: int, chunk_len: int = 0) -> int:
    """Default: the largest multiple of seq_len such that every chunk has its inputs and targets."""
    if chunk_len == 0:
        chunk_len = ((train_len - 1) // chunks // seq_len) * seq_len
        if chunk_len == 0:
            raise ValueError(f"training text of {train_len} chars is too short for {chunks} chunks "
                             f"of at least seq_len={seq_len}; use fewer chunks or a shorter seq_len")
    elif chunks * chunk_len + 1 > train_len:
        raise ValueError(f"chunk_len={chunk_len} x chunks={chunks} needs {chunks * chunk_len + 1} "
                         f"training chars but there are only {train_len}")
    return chunk_len


@dataclass(frozen=True)
class Corpus:
    """A text cut for training: vocab, the (chunks, chunk_len + 1) index grid and the held-out tail."""
    vocab: str
    sha256: str
    chunk_text: np.ndarray     # (C, L + 1) int32: chunk k's inputs are [:, :L], targets [:, 1:]
    val_text: np.ndarray       # (N_val,) int32
    seq_len: int

    @property
    def chunks(self) -> int:
        return self.chunk_text.shape[0]

    @property
    def chunk_len(self) -> int:
        return self.chunk_text.shape[1] - 1

    @property
    def steps_per_epoch(self) -> int:
        return self.chunk_len // self.seq_len

    def window(self, step_in_epoch: int, chunk_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (B, T) of one optimizer step for the given chunks (default: all)."""
        if not 0 <= step_in_epoch < self.steps_per_epoch:
            raise IndexError(f"step_in_epoch {step_in_epoch} outside 0..{self.steps_per_epoch - 1}")
        start = step_in_epoch * self.seq_len
        rows = self.chunk_text if chunk_ids is None else self.chunk_text[np.asarray(chunk_ids)]
        span = rows[:, start:start + self.seq_len + 1]
        return np.ascontiguousarray(span[:, :-1]), np.ascontiguousarray(span[:, 1:])


def make_corpus(text: str, config: Config, vocab: str | None = None) -> tuple[Corpus, Config]:
    """Shard text as the config says; returns the corpus and the config with chunk_len resolved."""
    if not text:
        raise ValueError("the corpus is empty")
    vocab = vocab or build_vocab(text)
    split = split_point(len(text), config.val_fraction)
    train = encode(text[:split], vocab)
    chunk_len = resolve_chunk_len(len(train), config.chunks, config.seq_len, config.chunk_len)
    grid = np.stack([train[k * chunk_len:(k + 1) * chunk_len + 1] for k in range(config.chunks)])
    corpus = Corpus(vocab=vocab, sha256=sha256_text(text), chunk_text=grid,
                    val_text=encode(text[split:], vocab), seq_len=config.seq_len)
    return corpus, config.replace(chunk_len=chunk_len)


def read_corpus(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus {path} not found; run `python scripts/fetch_data.py` "
                                f"or pass --corpus PATH") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"corpus {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                         f"pass a text file with --corpus") from None
    except IsADirectoryError:
        raise ValueError(f"corpus {path} is a directory; pass a text file with --corpus") from None
    if not text:
        raise ValueError(f"corpus {path} is empty; pass a text file with --corpus")
    return text
