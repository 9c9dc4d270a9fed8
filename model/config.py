"""Training configuration: one frozen dataclass, printed at start and stored in every checkpoint."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

DTYPES = ("float32", "float64")

# Fields that fix the shape of the parameters or of the data; a resumed run may not change them.
ARCHITECTURE_FIELDS = ("layers", "hidden", "seq_len", "chunks", "chunk_len", "val_fraction", "dtype")


@dataclass(frozen=True)
class Config:
    layers: int = 2
    hidden: int = 512
    seq_len: int = 100          # TBPTT window: k1 = k2 = seq_len
    chunks: int = 25
    chunk_len: int = 0          # 0: the largest multiple of seq_len that fits (resolved by the corpus)
    val_fraction: float = 0.0
    lr: float = 1e-3
    rho: float = 0.95
    eps: float = 1e-8
    clip: float = 5.0           # global L2 norm of the mean gradient; 0 disables
    dtype: str = "float32"
    seed: int = 1337
    dropout: float = 0.0        # inverted dropout on each layer's output h (training only)
    lr_decay: float = 1.0       # lr is multiplied by this once per epoch ...
    lr_decay_after: int = 0     # ... for every epoch completed beyond this many

    def __post_init__(self) -> None:
        problems = []
        for name in ("layers", "hidden", "seq_len", "chunks"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.chunk_len < 0 or self.chunk_len % max(self.seq_len, 1):
            problems.append(f"chunk_len must be 0 (auto) or a positive multiple of seq_len "
                            f"{self.seq_len} (got {self.chunk_len})")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1) (got {self.val_fraction})")
        if self.lr <= 0 or not 0.0 <= self.rho < 1.0 or self.eps <= 0 or self.clip < 0:
            problems.append("need lr > 0, 0 <= rho < 1, eps > 0 and clip >= 0")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 < self.lr_decay <= 1.0 or self.lr_decay_after < 0:
            problems.append("need 0 <= dropout < 1, 0 < lr_decay <= 1 and lr_decay_after >= 0")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES} (got {self.dtype!r})")
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def describe(self) -> str:
        return "config " + json.dumps(self.to_dict(), sort_keys=False)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of an epoch: a pure function of the config, so resume stays exact."""
        return self.lr * self.lr_decay ** max(0, epoch - self.lr_decay_after)

    def architecture_mismatch(self, other: "Config") -> list[str]:
        """Human-readable differences in the fields a resumed run may not change."""
        return [f"{name}: checkpoint has {getattr(self, name)!r}, asked for {getattr(other, name)!r}"
                for name in ARCHITECTURE_FIELDS if getattr(self, name) != getattr(other, name)]
