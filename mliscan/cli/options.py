"""Option types shared by every command, spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mliscan.spec import DEFAULT_ALPHAS, DEFAULT_BN_BATCH_SIZE, BNSpec

ARCH = "Architecture"
DATA = "Data"
EVAL = "Evaluation"
OUT = "Output"

Arch = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture adapter (see `mliscan adapters`); default: read from the file's metadata.",
        rich_help_panel=ARCH,
    ),
]
Hidden = Annotated[
    str | None,
    typer.Option(
        help="MLP hidden widths, e.g. 128,128 (default: read off the checkpoint).",
        rich_help_panel=ARCH,
    ),
]
Activation = Annotated[
    str | None, typer.Option(help="MLP activation: relu, tanh or gelu.", rich_help_panel=ARCH)
]
BN = Annotated[
    bool | None,
    typer.Option(
        "--bn/--no-bn", help="Build the batch-norm variant (mlp, resnet*).", rich_help_panel=ARCH
    ),
]
InitScheme = Annotated[
    str | None,
    typer.Option(
        help="ResNet initialisation: default, block-identity or fixup.", rich_help_panel=ARCH
    ),
]
ArchOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arch-opt", help="Any adapter option as KEY=VALUE (repeatable).", rich_help_panel=ARCH
    ),
]

Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="digits (bundled), mnist, fashion-mnist, cifar10, cifar100, wikitext2, tinytext (bundled), imagefolder (timm models), text (hf-* models); default: from metadata or the adapter.",
        rich_help_panel=DATA,
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        help="Folder in torchvision's on-disk layout (never downloaded).", rich_help_panel=DATA
    ),
]
DataLimit = Annotated[
    int | None, typer.Option(help="Use only the first N examples.", rich_help_panel=DATA)
]
DataFile = Annotated[
    str | None,
    typer.Option(
        help="--data text: a .txt corpus, or .jsonl/.csv with 'text' (and 'label').",
        rich_help_panel=DATA,
    ),
]
SeqLen = Annotated[
    int | None,
    typer.Option(
        help="Tokens per sequence: wikitext2/tinytext [default: 35]; text [default: 128, or "
        "the model's context if shorter].",
        rich_help_panel=DATA,
    ),
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        help="--data text (language models): use the first N tokens [default: 16384].",
        rich_help_panel=DATA,
    ),
]
Offline = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Hub sources from the local cache only (as HF_HUB_OFFLINE=1).",
    ),
]
Split = Annotated[
    str, typer.Option(help="train (the paper reports training loss) or test.", rich_help_panel=DATA)
]

Alphas = Annotated[
    int,
    typer.Option(
        help="Number of points of linspace(0, 1, N) (the paper: 50).", rich_help_panel=EVAL
    ),
]
BnBatchSize = Annotated[
    str,
    typer.Option(
        help="Batch size of the per-alpha BN re-estimation pass: 'all' (the whole data as one "
        "batch: the training set's own statistics) or N (batches of N, pooled).",
        rich_help_panel=EVAL,
    ),
]
BnWarmupBatches = Annotated[
    int | None,
    typer.Option(
        help="Cap the BN re-estimation pass at its first K batches (needs --bn-batch-size N).",
        rich_help_panel=EVAL,
    ),
]
BnMode = Annotated[
    str,
    typer.Option(
        help="exact (population statistics), paper (one epoch at momentum 0.1) or interpolate.",
        rich_help_panel=EVAL,
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.", rich_help_panel=EVAL)]
Dtype = Annotated[
    str,
    typer.Option(
        help="Working dtype: float32, float64, bfloat16 or float16 (interpolation itself is "
        "always computed in float32 or wider).",
        rich_help_panel=EVAL,
    ),
]
DTYPE_CHOICES = ("float32", "float64", "bfloat16", "float16")


def check_amp(amp: str) -> str:
    from mliscan.errors import UsageError

    if amp not in ("off", "bf16", "fp16"):
        raise UsageError(f"--amp must be off, bf16 or fp16, got {amp!r}")
    return amp


def check_dtype(dtype: str) -> None:
    from mliscan.errors import UsageError

    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")


BatchSize = Annotated[
    int,
    typer.Option("--batch-size", help="Evaluation batch size (speed only).", rich_help_panel=EVAL),
]
Seed = Annotated[int, typer.Option(help="Random seed.")]
JsonOut = Annotated[
    str | None,
    typer.Option(
        "--json", help="Write the result as JSON to PATH ('-' for stdout).", rich_help_panel=OUT
    ),
]
PlotOut = Annotated[
    Path | None,
    typer.Option(
        "--plot", help="Write the loss curve to PATH (.png/.svg/.pdf).", rich_help_panel=OUT
    ),
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow torch pickles with arbitrary globals (runs their code!)."
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=OUT)]

DEFAULTS = {
    "alphas": DEFAULT_ALPHAS,
    "bn_batch_size": "all" if DEFAULT_BN_BATCH_SIZE is None else str(DEFAULT_BN_BATCH_SIZE),
}


def arch_options(
    hidden: str | None,
    activation: str | None,
    bn: bool | None,
    init_scheme: str | None,
    extra: list[str] | None,
) -> dict[str, Any]:
    """The architecture options the user actually gave (nothing for those left unset)."""
    from mliscan.errors import UsageError

    given: dict[str, Any] = {}
    if hidden is not None:
        given["hidden"] = hidden
    if activation is not None:
        given["activation"] = activation
    if bn is not None:
        given["bn"] = bn
    if init_scheme is not None:
        given["init"] = init_scheme
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--arch-opt expects KEY=VALUE, got {item!r}")
        given[key.strip()] = value.strip()
    return given


def bn_spec(mode: str, batch_size: str, warmup_batches: int | None) -> BNSpec:
    """The BN options of compare, grid and check, checked."""
    from mliscan.errors import UsageError

    if mode not in ("exact", "paper", "interpolate"):
        raise UsageError(f"--bn-mode must be exact, paper or interpolate, got {mode!r}")
    size = parse_bn_batch_size(batch_size)
    if warmup_batches is not None:
        if warmup_batches < 1:
            raise UsageError("--bn-warmup-batches must be at least 1")
        if size is None and mode == "exact":
            raise UsageError(
                "--bn-warmup-batches K takes the first K batches of --bn-batch-size N; "
                "give --bn-batch-size too (the default 'all' is a single batch)"
            )
    return BNSpec(mode=mode, batch_size=size, max_batches=warmup_batches)  # type: ignore[arg-type]


def parse_bn_batch_size(text: str) -> int | None:
    from mliscan.errors import UsageError

    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--bn-batch-size takes a whole number or 'all', got {text!r}") from None
    if value < 2:
        raise UsageError("--bn-batch-size must be at least 2 (a batch needs a variance)")
    return value
