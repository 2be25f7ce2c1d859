"""Checkpoint files -> plain state dicts, safely.

* ``.safetensors`` (single or sharded through ``model.safetensors.index.json``);
* ``.pt/.pth/.bin/.ckpt`` only through ``torch.load(weights_only=True)``: a pickle that needs
  arbitrary globals is refused with the name of the global, never unpickled;
* a directory holding one of those;
* common wrappers (``state_dict``, ``model``, ``ema`` ... keys) and ``module.`` /
  ``_orig_mod.`` prefixes are removed.

mliscan's own files carry one safetensors metadata key, ``mliscan``, whose value is a JSON
object (architecture, its options, data); one key keeps the header byte-deterministic.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mliscan.errors import (
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    short_list,
)
from mliscan.paths import atomic_path, parse_json, read_json

METADATA_KEY = "mliscan"
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the weights, most specific first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema", "model_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")
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
    reader: Any = None
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
        tensors, metadata = _load_sharded(p, trust_pickle)
        notes: list[str] = []
    elif p.suffix in SAFETENSORS_SUFFIXES or (
        p.suffix not in TORCH_SUFFIXES and not zipfile.is_zipfile(p)
    ):
        if ema:
            raise CheckpointFormatError(
                f"{p}: --ema reads the EMA weights of a training checkpoint (.pth.tar, .ckpt); "
                "a safetensors file holds one set of weights: drop --ema"
            )
        tensors, metadata = _load_safetensors(p)
        notes = []
    else:
        obj = _torch_load(p, trust_pickle)
        tensors, notes = unwrap_state_dict(_pick_ema(obj, p) if ema else obj, p)
        if _is_lightning(obj):
            tensors, stripped_attr = strip_lightning_attribute(tensors)
            if stripped_attr:
                notes.append(f"stripped the LightningModule attribute prefix {stripped_attr!r}")
        metadata = {}
    tensors, stripped = strip_prefixes(tensors)
    notes += [f"stripped prefix {s!r}" for s in stripped]
    if not tensors:
        raise CheckpointFormatError(f"{p}: holds no tensors; is it a model checkpoint?")
    _check_dtypes(tensors, p)
    config = read_config(p.parent / "config.json")
    reader = (
        _safetensors_reader(p, "".join(stripped))
        if p.suffix != ".bin"
        and (p.name.endswith(".safetensors.index.json") or p.suffix in SAFETENSORS_SUFFIXES)
        else None
    )
    return Checkpoint(
        path=p, tensors=tensors, metadata=metadata, notes=notes, config=config, reader=reader
    )


def _safetensors_reader(p: Path, prefix: str) -> Any:
    """``read(name)``: one tensor read afresh from a safetensors file or sharded index."""
    from safetensors import safe_open

    if p.name.endswith(".index.json"):
        weight_map = read_json(p)["weight_map"]

        def shard(name: str) -> Path:
            return p.parent / weight_map[name]
    else:

        def shard(name: str) -> Path:
            return p

    def read(name: str) -> torch.Tensor:
        full = prefix + name
        with safe_open(str(shard(full)), framework="pt", device="cpu") as f:
            return f.get_tensor(full).clone()

    return read


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


def _load_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as exc:
        raise CheckpointFormatError(
            f"{p}: not a readable safetensors file ({_first_line(exc)}); it may be truncated "
            "or corrupt: copy or save it again"
        ) from exc
    except Exception as exc:  # any other failure on an untrusted file is a bad file too
        raise CheckpointFormatError(
            f"{p}: cannot be read ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    return tensors, _parse_metadata(raw_meta, p)


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


# The types of the fields of mliscan's metadata that the loader reads.
METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "arch": (str,),
    "arch_options": (dict,),
    "data": (dict,),
    "role": (str,),
    "seed": (int,),
    "mliscan_version": (str,),
}
DATA_METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "split": (str,),
    "limit": (int, type(None)),
    "seq_len": (int, type(None)),
}


def _check_metadata(value: dict[str, Any], p: Path) -> None:
    fields = [(k, value.get(k), t) for k, t in METADATA_TYPES.items() if k in value]
    data = value.get("data")
    if isinstance(data, dict):
        fields += [
            (f"data.{k}", data.get(k), t) for k, t in DATA_METADATA_TYPES.items() if k in data
        ]
    for key, v, types in fields:
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise CheckpointFormatError(
                f"{p}: its '{METADATA_KEY}' metadata field {key} is {type(v).__name__}, not "
                f"{' or '.join(t.__name__ for t in types)}; pass --arch (and --data) to ignore it"
            )


def _parse_metadata(raw: dict[str, str], p: Path) -> dict[str, Any]:
    text = raw.get(METADATA_KEY)
    if text is None:
        return {}
    try:
        value = parse_json(text)
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(
            f"{p}: its '{METADATA_KEY}' metadata is not valid JSON ({exc.msg}); "
            "pass --arch to ignore it"
        ) from exc
    if not isinstance(value, dict):
        raise CheckpointFormatError(f"{p}: its '{METADATA_KEY}' metadata is not a JSON object")
    _check_metadata(value, p)
    return value


def _load_sharded(
    index: Path, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        weight_map = read_json(index)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (
        json.JSONDecodeError,
        KeyError,
        TypeError,
        UnicodeDecodeError,
        RecursionError,
        OSError,
    ) as exc:
        raise CheckpointFormatError(
            f"{index}: not a valid shard index (needs a 'weight_map' object): {exc}"
        ) from exc
    for name, shard_name in weight_map.items():
        if not isinstance(shard_name, str) or not shard_name:
            shown = repr(shard_name)
            raise CheckpointFormatError(
                f"{index}: weight_map maps {name[:80]!r} to "
                f"{shown if len(shown) <= 40 else shown[:37] + '...'} "
                f"({type(shard_name).__name__}), not a shard file name; re-save or "
                "re-download the checkpoint"
            )
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, Any] = {}
    for shard_name in sorted(set(weight_map.values())):
        if not is_safe_relative(shard_name):
            raise CheckpointFormatError(
                f"{index}: shard {shard_name!r} points outside the checkpoint directory"
            )
        shard = index.parent / shard_name
        if not shard.is_file():
            raise CheckpointNotFoundError(f"{index}: shard {shard_name} is missing; fetch it")
        if shard.suffix in SAFETENSORS_SUFFIXES:
            part, meta = _load_safetensors(shard)
            metadata = metadata or meta
        else:
            part, _ = unwrap_state_dict(_torch_load(shard, trust_pickle), shard)
        elsewhere = sorted(k for k in part if k in weight_map and weight_map[k] != shard_name)
        if elsewhere:
            k = elsewhere[0]
            raise CheckpointFormatError(
                f"{index}: shard {shard_name} also holds {k}, which the index places in "
                f"{weight_map[k]} ({len(elsewhere)} such tensors); the shards disagree: "
                "re-save or re-download the checkpoint"
            )
        tensors.update({k: v for k, v in part.items() if weight_map.get(k) == shard_name})
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointFormatError(
            f"{index}: {len(missing)} indexed tensors are absent from the shards: "
            f"{short_list(missing)}"
        )
    return tensors, metadata


_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


# A torch zip whose entries inflate far beyond the file is refused before torch reads it.
MAX_INFLATION = 16


def _check_zip(p: Path) -> None:
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


def _torch_load(p: Path, trust_pickle: bool = False) -> Any:
    """torch.load with weights_only=True; arbitrary globals are refused, never executed."""
    _check_zip(p)
    if trust_pickle:
        import warnings

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


# timm train.py keeps the EMA weights (--model-ema) beside the raw ones under these keys.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


def _pick_ema(obj: Any, p: Path) -> Any:
    """``--ema``: the exponential-moving-average weights of a training checkpoint."""
    if isinstance(obj, dict):
        for key in EMA_KEYS:
            if isinstance(obj.get(key), dict):
                return obj[key]
    raise CheckpointFormatError(
        f"{p}: --ema asks for EMA weights, but the file holds none ({', '.join(EMA_KEYS)}); "
        "drop --ema"
    )


def _is_lightning(obj: Any) -> bool:
    """A PyTorch Lightning ``.ckpt``: the state dict beside Lightning's own bookkeeping."""
    return (
        isinstance(obj, dict)
        and "state_dict" in obj
        and ("pytorch-lightning_version" in obj or "lightning_version" in obj or "loops" in obj)
    )


def strip_lightning_attribute(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], str | None]:
    """A LightningModule keeps its network in an attribute (``self.model``): when every
    key starts with the same attribute, drop it so the keys are the network's own."""
    firsts = {k.split(".", 1)[0] for k in tensors}
    if len(firsts) != 1 or not all("." in k for k in tensors):
        return tensors, None
    prefix = f"{firsts.pop()}."
    return {k[len(prefix) :]: v for k, v in tensors.items()}, prefix


def unwrap_state_dict(obj: Any, p: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Find the state dict inside a loaded torch object (plain or wrapped)."""
    notes: list[str] = []
    for _ in range(4):  # wrappers nest at most a few levels in practice
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}, notes
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        notes.append(f"unwrapped '{key}'")
        obj = obj[key]
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors, notes
    raise CheckpointFormatError(
        f"{p}: holds no state dict (a mapping of names to tensors, possibly under one of "
        f"{', '.join(WRAPPER_KEYS)}); found {type(obj).__name__}"
    )


def strip_prefixes(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes."""
    stripped: list[str] = []
    changed = True
    while changed and tensors:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                stripped.append(prefix)
                changed = True
    return tensors, stripped


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


def save_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> None:
    """Write a safetensors file atomically, with mliscan's metadata as one sorted JSON key."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)


def is_safe_relative(name: Any) -> bool:
    """A relative file name that stays inside its folder (judged on the text, not by
    following links: Hugging Face cache snapshots are symlinks into a blob store)."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    return not name.startswith("/") and ".." not in parts and ":" not in parts[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def content_hash(tensors: dict[str, torch.Tensor], length: int = 16) -> str:
    """A hash of names, dtypes, shapes and bytes: the identity of a set of weights."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]
