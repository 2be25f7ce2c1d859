"""Checkpoint files -> plain state dicts, safely; the checks a pair of them must pass.

* ``.safetensors`` (single or sharded through ``model.safetensors.index.json``;
  :mod:`mliscan.formats`);
* ``.pt/.pth/.bin/.ckpt`` only through ``torch.load(weights_only=True)``: a pickle that needs
  arbitrary globals is refused with the name of the global, never unpickled
  (:mod:`mliscan.picklepolicy`);
* a directory holding one of those;
* common wrappers (``state_dict``, ``model``, ``ema`` ... keys), Lightning's attribute prefix
  and ``module.`` / ``_orig_mod.`` prefixes are removed (:mod:`mliscan.stacks`).

This module dispatches a path to its format and checks what comes back (a regular file,
tensors of types mliscan can hold); :func:`check_pair`, :func:`check_finite` and :func:`content_hash`
judge the loaded weights.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mliscan.errors import (
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    NonFiniteWeightsError,
    short_list,
)
from mliscan.formats import (
    METADATA_KEY,
    SAFETENSORS_SUFFIXES,
    TORCH_SUFFIXES,
    is_safe_relative,
    load_safetensors,
    load_sharded,
    safetensors_reader,
    save_checkpoint,
)
from mliscan.paths import read_json
from mliscan.picklepolicy import torch_load
from mliscan.stacks import (
    strip_lightning_attribute,
    strip_prefixes,
    training_state_dict,
    unwrap_state_dict,
)

# Names callers import from here (some defined in the modules imported above).
__all__ = [
    "METADATA_KEY",
    "SAFETENSORS_SUFFIXES",
    "TORCH_SUFFIXES",
    "Checkpoint",
    "check_finite",
    "check_pair",
    "content_hash",
    "is_safe_relative",
    "load_checkpoint",
    "read_config",
    "save_checkpoint",
    "strip_lightning_attribute",
    "strip_prefixes",
    "unwrap_state_dict",
]

# Files looked for, in order, when a directory is given.
DIRECTORY_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


@dataclass
class Checkpoint:
    """A loaded state dict with where it came from."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    """The ``mliscan`` metadata object (empty for foreign files)."""
    notes: list[str] = field(default_factory=list)
    """What was unwrapped or stripped, for the report."""
    config: dict[str, Any] | None = None
    """``config.json`` beside the weights (transformers / timm folders), else None."""
    source: Any = None
    """The :class:`mliscan.sources.Resolved` it came from, when loaded through a source."""
    reader: Callable[[str], torch.Tensor] | None = None
    """For safetensors files: ``reader(name)`` reads one tensor again from disk (a fresh
    copy; None for torch pickles). Lets a large model's endpoint be restored exactly without
    keeping it in memory."""

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.path.name


def load_checkpoint(
    path: str | os.PathLike[str], trust_pickle: bool = False, ema: bool = False
) -> Checkpoint:
    """Read a checkpoint file or directory into a :class:`Checkpoint` (CPU tensors).

    ``trust_pickle`` lets torch pickles with arbitrary globals through (``weights_only=False``):
    only for files from a trusted source, since unpickling can run any code.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"{p}: no such file or directory; check the path")
    if p.is_dir():
        p = _pick_in_directory(p)
    if not stat.S_ISREG(p.stat().st_mode):  # a FIFO or device would block or never end
        raise CheckpointFormatError(f"{p}: not a regular file (a pipe, device or socket?)")
    if p.name.endswith(".index.json"):
        tensors, metadata = load_sharded(p, trust_pickle)
        notes: list[str] = []
    elif p.suffix in SAFETENSORS_SUFFIXES or (
        p.suffix not in TORCH_SUFFIXES and not zipfile.is_zipfile(p)
    ):
        if ema:
            raise CheckpointFormatError(
                f"{p}: --ema reads the EMA weights of a training checkpoint (.pth.tar, .ckpt); "
                "a safetensors file holds one set of weights: drop --ema"
            )
        tensors, metadata = load_safetensors(p)
        notes = []
    else:
        tensors, notes = training_state_dict(torch_load(p, trust_pickle), p, ema)
        metadata = {}
    tensors, stripped = strip_prefixes(tensors)
    notes += [f"stripped prefix {s!r}" for s in stripped]
    if not tensors:
        raise CheckpointFormatError(f"{p}: holds no tensors; is it a model checkpoint?")
    _check_dtypes(tensors, p)
    config = read_config(p.parent / "config.json")
    reader = (
        safetensors_reader(p, "".join(stripped))
        if p.suffix != ".bin"
        and (p.name.endswith(".safetensors.index.json") or p.suffix in SAFETENSORS_SUFFIXES)
        else None
    )
    return Checkpoint(
        path=p, tensors=tensors, metadata=metadata, notes=notes, config=config, reader=reader
    )


MAX_CONFIG_BYTES = 4 << 20


def read_config(path: Path) -> dict[str, Any] | None:
    """A transformers/timm ``config.json`` (a JSON object of at most 4 MiB), or None."""
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointFormatError(f"{path}: larger than 4 MiB; not a model config")
    try:
        value = read_json(path, MAX_CONFIG_BYTES)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointFormatError(f"{path}: not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(value, dict):
        raise CheckpointFormatError(f"{path}: not a JSON object; fix or remove it")
    return value


def _pick_in_directory(d: Path) -> Path:
    for name in DIRECTORY_CANDIDATES:
        if (d / name).is_file():
            return d / name
    files = sorted(f for f in d.iterdir() if f.suffix in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)
    if len(files) == 1:
        return files[0]
    if not files:
        if any(c.is_dir() and c.name.startswith("checkpoint-") for c in d.iterdir()):
            raise CheckpointNotFoundError(
                f"{d}: a training run folder (checkpoint-N inside); pass {d}@first and "
                f"{d}@last, or one {d}/checkpoint-N"
            )
        raise CheckpointNotFoundError(
            f"{d}: directory holds no weights file; expected one of "
            f"{', '.join(DIRECTORY_CANDIDATES)} or a single .safetensors/.pt file"
        )
    raise CheckpointNotFoundError(
        f"{d}: directory holds several weights files ({short_list([f.name for f in files])}); "
        "pass the file itself"
    )


# Tensors mliscan can hold: real floating weights (interpolated) and integer/bool buffers
# (copied). Complex and float8 weights have no meaning on this path.
SUPPORTED_DTYPES = frozenset(
    {
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    }
)


def _check_dtypes(tensors: dict[str, torch.Tensor], p: Path) -> None:
    bad = sorted(
        f"{k} ({str(v.dtype).removeprefix('torch.')})"
        for k, v in tensors.items()
        if v.dtype not in SUPPORTED_DTYPES
    )
    if bad:
        raise CheckpointFormatError(
            f"{p}: {len(bad)} tensors of a type mliscan cannot interpolate: {short_list(bad, 3)}; "
            "weights must be float16/bfloat16/float32/float64 (buffers integer or bool)"
        )


def check_finite(ckpt: Checkpoint) -> None:
    """Raise naming every tensor that holds NaN or Inf."""
    bad = [
        k
        for k, v in ckpt.tensors.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise NonFiniteWeightsError(
            f"{ckpt.path}: non-finite values (NaN/Inf) in {len(bad)} tensors: {short_list(bad)}; "
            "the run diverged or the file is corrupt"
        )


def check_pair(init: Checkpoint, final: Checkpoint) -> None:
    """Init and final must hold the same keys with the same shapes and dtypes."""
    a, b = init.tensors, final.tensors
    name_a, name_b = (
        (init.name, final.name) if init.name != final.name else (str(init.path), str(final.path))
    )
    problems: list[str] = []
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a:
        problems.append(f"{name_a} has {len(only_a)} keys {name_b} lacks: {short_list(only_a)}")
    if only_b:
        problems.append(f"{name_b} has {len(only_b)} keys {name_a} lacks: {short_list(only_b)}")
    mism = [
        f"{k} {tuple(a[k].shape)}/{str(a[k].dtype).removeprefix('torch.')} vs "
        f"{tuple(b[k].shape)}/{str(b[k].dtype).removeprefix('torch.')}"
        for k in sorted(set(a) & set(b))
        if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype
    ]
    if mism:
        problems.append(f"{len(mism)} shape/dtype mismatches: {short_list(mism, 4)}")
    if problems:
        raise CheckpointMismatchError(
            "; ".join(problems) + " (were they saved from different architectures?)"
        )


def content_hash(tensors: dict[str, torch.Tensor], length: int = 16) -> str:
    """A hash of names, dtypes, shapes and bytes: the identity of a set of weights."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]
