"""The pickle policy: torch files are read with ``torch.load(weights_only=True)``.

A pickle that needs arbitrary globals is refused with the name of the global, never
unpickled. Training stacks' settings objects (Lightning's hyper-parameters, timm train.py's
argparse Namespace, ...) are loaded as inert placeholders, their code never run.
``trust_pickle`` (``--trust-pickle``) is the one way around, for files from a trusted source.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from mliscan.errors import CheckpointFormatError, UnsafeCheckpointError

_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


# A torch zip whose entries inflate far beyond the file is refused before torch reads it.
MAX_INFLATION = 16


def check_zip(p: Path) -> None:
    """Refuse a torch zip whose entries declare far more bytes than the file holds."""
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip (legacy torch format) or corrupt: torch.load reports it
    size = p.stat().st_size
    declared = sum(i.file_size for i in infos)
    if declared > MAX_INFLATION * size + (1 << 20):
        raise CheckpointFormatError(
            f"{p}: refused: its entries declare {declared} bytes from a {size}-byte file "
            "(a zip bomb?); torch never writes compressed checkpoints"
        )


# Training stacks store their settings beside the weights: Lightning's hyper-parameters
# (AttributeDict, omegaconf containers), timm train.py's argparse Namespace, paths, numpy
# scalars. A global from these namespaces is loaded as an inert placeholder (its code never
# runs; the settings are skipped); any other global is refused as before.
SKIPPED_GLOBAL_PREFIXES = (
    "argparse.",
    "pathlib.",
    "lightning.",
    "lightning_fabric.",
    "pytorch_lightning.",
    "omegaconf.",
    "timm.",
    "transformers.",
    "accelerate.",
    "numpy.",
    "torchmetrics.",
    "collections.",
    "enum.",
    "datetime.",
    "functools.partial",
)
# A checkpoint naming more distinct foreign globals than this is not a training checkpoint.
MAX_SKIPPED_GLOBALS = 64


class SkippedSetting:
    """Stands in for a training framework's object inside a checkpoint: takes any
    arguments and state, keeps nothing, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> SkippedSetting:
        return SkippedSetting()


def _weights_only_load(p: Path) -> Any:
    """``torch.load(weights_only=True)`` with known training-stack globals mapped to
    :class:`SkippedSetting` (so a Lightning or timm checkpoint loads, settings skipped):
    torch lists the foreign globals (``get_unsafe_globals_in_checkpoint``, read off the
    pickle without running it) and one ``safe_globals`` load follows. Any other global is
    left to torch, which refuses it."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
    except Exception:  # not a zip checkpoint or unreadable: torch.load says what is wrong
        names = []
    skipped = [n for n in names if n.startswith(SKIPPED_GLOBAL_PREFIXES)]
    if len(skipped) > MAX_SKIPPED_GLOBALS:
        skipped = []  # not a training checkpoint: refused as any pickle with globals
    with torch.serialization.safe_globals([(SkippedSetting, n) for n in skipped]):
        return torch.load(p, map_location="cpu", weights_only=True)


def torch_load(p: Path, trust_pickle: bool = False) -> Any:
    """torch.load with weights_only=True; arbitrary globals are refused, never executed."""
    check_zip(p)
    if trust_pickle:
        warnings.warn(
            f"{p}: loading with weights_only=False (--trust-pickle): its pickle may run code",
            stacklevel=2,
        )
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:  # any failure of a trusted pickle is still a bad file
            raise CheckpointFormatError(f"{p}: cannot be unpickled ({_first_line(exc)})") from exc
    try:
        return _weights_only_load(p)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            found = _GLOBAL_RE.search(text)
            what = f"the global {found.group(1)}" if found else "arbitrary Python objects"
            raise UnsafeCheckpointError(
                f"{p}: refused: this torch pickle needs {what}, and unpickling it could run "
                "arbitrary code; if you trust it, convert it to safetensors in a sandbox "
                "(safetensors.torch.save_file(torch.load(f, weights_only=False), 'x.safetensors'))"
            ) from exc
        raise CheckpointFormatError(f"{p}: corrupt torch file ({_first_line(exc)})") from exc
    except Exception as exc:  # a malformed pickle can raise anything (IndexError, KeyError, ...)
        raise CheckpointFormatError(
            f"{p}: not a readable torch checkpoint ({type(exc).__name__}: {_first_line(exc)}); "
            "it may be truncated or corrupt"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
