"""Frozen descriptions of what to evaluate, and the paper's constants.

Everything a run depends on is a field here, with its help text beside it, so a
result can be reproduced from its JSON alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

# Section 4 of the paper evaluates every interpolation on 50 evenly spaced alphas in [0, 1].
DEFAULT_ALPHAS = 50
# Definition 1 (Section 3.1): a path is monotonic when min-Delta <= tolerance. Our default is
# the exact definition (0); the paper's MLP tables (Table 1) used Delta > 1e-3 as "non-monotonic".
DEFAULT_TOLERANCE = 0.0
PAPER_MLP_TOLERANCE = 1e-3
# Batch size of the train-mode pass that re-estimates batch-norm statistics at each alpha:
# None is the whole data as one batch (the training set's own activation statistics).
DEFAULT_BN_BATCH_SIZE: int | None = None
# The paper code's warm-up epoch runs in training batches; ours are of this size.
PAPER_BN_BATCH_SIZE = 256
# Batch size of the evaluation passes (no effect on results, only on speed and memory):
# None means "auto", a short timing probe of a few candidates on the first use.
DEFAULT_EVAL_BATCH_SIZE: int | None = None
EVAL_BATCH_CANDIDATES = (64, 256, 1024, 4096)
# Momentum of the paper code's batch-norm warm-up epoch (torch's default).
PAPER_BN_MOMENTUM = 0.1

# Text data: tokens per example, and the share of the corpus a language-model curve reads by
# default (16384 tokens = 128 sequences of 128: a curve of a 100M model in minutes on a CPU).
DEFAULT_SEQ_LEN = 128
DEFAULT_MAX_TOKENS = 16384
# Share of tokens masked for a masked-LM loss (BERT's 15%), chosen once with this seed.
MLM_PROBABILITY = 0.15
MLM_SEED = 0

BNMode = Literal["exact", "paper", "interpolate"]


@dataclass(frozen=True)
class BNSpec:
    """How batch-norm running statistics are obtained at each alpha."""

    mode: BNMode = "exact"
    """exact: every BN layer's input mean and population variance over all examples, from a
    train-mode pass (one full batch by default, else batches of ``batch_size`` that weigh by
    their size). paper: one epoch of train-mode passes at momentum 0.1 in batches of 256, as
    in the paper's code. interpolate: interpolate the stored running statistics like any
    other tensor (no re-estimation)."""
    batch_size: int | None = DEFAULT_BN_BATCH_SIZE
    """Batch size of the re-estimation pass; None means the whole data as one batch (paper
    mode: 256)."""
    max_batches: int | None = None
    """Cap on the number of batches of the re-estimation pass (None: the whole set)."""

    def __post_init__(self) -> None:
        if self.mode == "paper" and self.batch_size is None:
            object.__setattr__(self, "batch_size", PAPER_BN_BATCH_SIZE)

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "batch_size": "all" if self.batch_size is None else self.batch_size,
            "max_batches": self.max_batches,
        }


@dataclass(frozen=True)
class DataSpec:
    """Which examples the loss is measured on."""

    name: str = "digits"
    """digits (bundled), mnist, fashion-mnist, cifar10, cifar100, imagefolder, text."""
    data_dir: str | None = None
    """Folder in torchvision's on-disk layout (not needed for digits)."""
    split: Literal["train", "test"] = "train"
    """The paper reports training loss."""
    limit: int | None = None
    """Use only the first N examples (deterministic)."""
    data_file: str | None = None
    """Text data: a .txt corpus, or .jsonl/.csv with a 'text' (and 'label') field."""
    seq_len: int | None = None
    """Text data: tokens per sequence (one example); None: 128, or the model's context if
    shorter."""
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    """Text data (language models): use the first N tokens of the corpus."""


@dataclass(frozen=True)
class EvalSpec:
    """Settings of one interpolation evaluation."""

    alphas: int = DEFAULT_ALPHAS
    """Number of points of linspace(0, 1, N)."""
    bn: BNSpec = field(default_factory=BNSpec)
    gauss: bool = True
    """Compute the average Gauss length of the logit curve (Definition 2)."""
    gauss_examples: int | None = None
    """Average the Gauss length over the first N examples only (None: all)."""
    gauss_method: Literal["auto", "jvp"] = "auto"
    """auto: one hand-written second-order forward pass where every layer has a rule,
    nested torch.func.jvp otherwise; jvp: always nested jvp (the reference)."""
    batch_size: int | None = DEFAULT_EVAL_BATCH_SIZE
    """Evaluation batch size (speed and memory only); None: chosen by a timing probe."""
    alpha_chunk: int = 1
    """Alphas evaluated per pass with torch.func.vmap (a GPU option for small models without
    batch norm, or with the default full-data BN statistics held as one batch; 1: one alpha
    at a time)."""
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    """Working dtype of the module. The endpoints stay in their stored dtype; theta(alpha) is
    computed per tensor in float32 (or float64) and rounded once into a low-precision module."""
    device: str = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"
    """Autocast the batch-norm and loss passes to bfloat16/float16 (tensor-core speed on a
    GPU; the weights and the Gauss-length pass keep the working dtype)."""
    compile: bool = False
    """Run the evaluation passes through ``torch.compile`` (speed only: the first alpha pays
    the compilation; the full-batch BN pass and the Gauss-length pass stay eager)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def spec_hash(obj: Any, length: int = 12) -> str:
    """A stable short hash of a dataclass's *non-default* fields.

    Adding a field with a default never changes the hash of older specs.
    """
    return hashlib.sha256(
        json.dumps(non_default_fields(obj), sort_keys=True, default=str).encode()
    ).hexdigest()[:length]


def non_default_fields(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested = non_default_fields(value)
            if nested:
                out[f.name] = nested
        elif value != default:
            out[f.name] = value
    return out
