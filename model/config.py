"""Training configuration: one frozen dataclass, printed at start and stored in every checkpoint.

Each field is declared once, here, with its default and its help text; the command-line flags
(model/cli.py), the checkpoint's meta and the resume check are derived from these fields."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .masks import DROPOUT_FORMS
from .params import PIECE_ELEMENTS
from .wire import WIRE_TAGS

DTYPES = ("float32", "float64")
RECURRENT_FORMS = ("auto", "blocks", "single")
WIRE_DTYPES = tuple(WIRE_TAGS)     # the run setting's names; model/wire.py maps them to the protocol's
CHAIN_SUMS = ("run", "wire")

# Fields that fix the shape of the parameters or of the data; a resumed run may not change them.
ARCHITECTURE_FIELDS = ("layers", "hidden", "seq_len", "chunks", "chunk_len", "val_fraction", "dtype")


def _field(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


def _of_type(value, kind: type) -> bool:
    """An int field takes an int (not a bool); a float field an int or a float; a str a str."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


@dataclass(frozen=True)
class Config:
    layers: int = _field(2, "LSTM layers")
    hidden: int = _field(512, "units per layer")
    seq_len: int = _field(100, "TBPTT window, k1 = k2")
    chunks: int = _field(25, "chunks the training text is cut into, trained as one batch")
    chunk_len: int = _field(0, "characters per chunk; 0 = the largest multiple of --seq-len that fits")
    val_fraction: float = _field(0.0, "held-out tail of the corpus for validation")
    lr: float = _field(1e-3, "RMSprop learning rate")
    rho: float = _field(0.95, "RMSprop decay")
    eps: float = _field(1e-8, "RMSprop epsilon")
    clip: float = _field(5.0, "clip the mean gradient's global L2 norm to this; 0 disables")
    dtype: str = _field("float32", "float32 for speed, float64 for checks", DTYPES)
    seed: int = _field(1337, "initialisation (and dropout mask) seed")
    dropout: float = _field(0.0, "inverted dropout on each layer's output during training")
    dropout_form: str = _field(
        "step", "how the dropout masks vary in time: 'step' (a fresh mask for every time step) or 'window' "
        "(one mask per chunk and window, shared by its time steps: AWD-LSTM's locked dropout)", DROPOUT_FORMS)
    lr_decay: float = _field(1.0, "multiply the learning rate by this once per epoch ...")
    lr_decay_after: int = _field(0, "... for each epoch completed beyond this many")
    recurrent_form: str = _field(
        "auto", "how every process computes the per-step recurrent product: 'blocks' (column "
        "blocks, fast where OpenBLAS has its AVX-512 small-matrix kernel), 'single' (one product), "
        "or 'auto' (decided once per run from the coordinator's CPU, then kept in the checkpoint). "
        "The two forms differ in the last bits, so one run uses one form everywhere", RECURRENT_FORMS)
    ema_decay: float = _field(
        0.0, "keep an exponential moving average of the parameters, updated after every step with this "
        "decay (e.g. 0.999); validation scores it beside the parameters, and best.npz keeps whichever "
        "scores better. It never changes the training itself; 0 = off")
    wire_dtype: str = _field(
        "exact", "what parameters and gradients travel as between coordinator and workers: 'exact' "
        "(the run's dtype), or 'bfloat16' / 'float16', half the bytes, rounded (the in-process "
        "path rounds alike, so worker counts still agree)", WIRE_DTYPES)
    weight_drop: float = _field(
        0.0, "DropConnect on each layer's recurrent weights W_h during training (AWD-LSTM's weight drop): "
        "each element dropped with this probability, one mask per layer and step shared by every chunk "
        "(so worker counts still agree); 0 = off")
    weight_decay: float = _field(
        0.0, "decoupled weight decay (as AdamW's): every parameter is multiplied by 1 - lr * this before "
        "each RMSprop step; applied by the coordinator, so worker counts still agree; 0 = off")
    piece_elements: int = _field(
        PIECE_ELEMENTS, "the most elements in one piece of the parameters and gradients on the wire "
        "(protocol/SPEC.md 4.4): each hop of a relay chain waits for one piece, so smaller pieces "
        "shorten long chains, at the cost of more messages; changes no bit of the results")
    chain_sums: str = _field(
        "run", "what a relay chain's sums travel in: 'run' (the run's dtype: the chain adds exactly as the "
        "coordinator would) or 'wire' (with a narrow --wire-dtype, half the bytes back: every partial sum "
        "rounded to the wire dtype before the next gradient is added; the coordinator rounds its own sum "
        "alike, so the bits never depend on whether a step went by a chain)", CHAIN_SUMS)

    def __post_init__(self) -> None:
        wrong = [f"{f.name} must be {type(f.default).__name__} (got {type(getattr(self, f.name)).__name__})"
                 for f in self.fields() if not _of_type(getattr(self, f.name), type(f.default))]
        if wrong:       # checked first: a value from a file or the network may be of any type
            raise ValueError("invalid config: " + "; ".join(wrong))
        problems = []
        for name in ("layers", "hidden", "seq_len", "chunks"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.chunk_len < 0 or self.chunk_len % max(self.seq_len, 1):
            problems.append(f"chunk_len must be 0 (auto) or a positive multiple of seq_len "
                            f"{self.seq_len} (got {self.chunk_len})")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1) (got {self.val_fraction})")
        if not (self.lr > 0 and 0.0 <= self.rho < 1.0 and self.eps > 0 and self.clip >= 0
                and self.lr < float("inf") and self.clip < float("inf")):
            problems.append("need finite lr > 0, 0 <= rho < 1, eps > 0 and clip >= 0")
        if not (0.0 <= self.dropout < 1.0 and 0.0 < self.lr_decay <= 1.0 and self.lr_decay_after >= 0):
            problems.append("need 0 <= dropout < 1, 0 < lr_decay <= 1 and lr_decay_after >= 0")
        if not 0.0 <= self.weight_drop < 1.0:
            problems.append(f"need 0 <= weight_drop < 1 (got {self.weight_drop})")
        if not (0.0 <= self.weight_decay and self.weight_decay * self.lr < 1.0):
            problems.append(f"need 0 <= weight_decay < 1/lr (got {self.weight_decay})")
        if self.piece_elements < 1:
            problems.append(f"need piece_elements >= 1 (got {self.piece_elements})")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"need 0 <= ema_decay < 1 (got {self.ema_decay})")
        for name in ("dtype", "recurrent_form", "wire_dtype", "chain_sums", "dropout_form"):
            choices = self.choices(name)
            if getattr(self, name) not in choices:
                problems.append(f"{name} must be one of {choices} (got {getattr(self, name)!r})")
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))

    @staticmethod
    def fields() -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(Config)

    @staticmethod
    def choices(name: str) -> tuple:
        return next(f.metadata["choices"] for f in Config.fields() if f.name == name)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in cls.fields()}
        return cls(**{k: v for k, v in values.items() if k in known})

    def describe(self) -> str:
        return "config " + json.dumps(self.to_dict(), sort_keys=False)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of an epoch: a pure function of the config, so resume stays exact."""
        return self.lr * self.lr_decay ** max(0, epoch - self.lr_decay_after)



# Asked values that stand for "whatever the run already has": they never conflict on resume.
RESOLVED_LATER = {"chunk_len": 0, "recurrent_form": "auto"}


def resumed_config(stored: Config, asked: Config, explicit) -> tuple[Config, list[str], list[str]]:
    """What a resumed run trains with: the checkpoint's settings, each one a flag gave
    explicitly (a name in `explicit`) replaced by the asked value. Returns (config, the changes
    as "name old -> new", the architecture fields asked to differ, which a resume cannot do)."""
    changes, conflicts, replaced = [], [], {}
    for name in sorted(explicit):
        old, new = getattr(stored, name), getattr(asked, name)
        if old == new or RESOLVED_LATER.get(name) == new:
            continue
        if name in ARCHITECTURE_FIELDS:
            conflicts.append(f"{name}: checkpoint has {old!r}, asked for {new!r}")
        else:
            replaced[name] = new
            changes.append(f"{name} {old!r} -> {new!r}")
    return stored.replace(**replaced), changes, conflicts
