"""Checkpoint formats: safetensors files (read with typed metadata, read one tensor again,
written atomically) and sharded indexes (``*.index.json``) of safetensors or torch shards.

mliscan's own files carry one safetensors metadata key, ``mliscan``, whose value is a JSON
object (architecture, its options, data); one key keeps the header byte-deterministic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mliscan.errors import CheckpointFormatError, CheckpointNotFoundError, short_list
from mliscan.paths import atomic_path, parse_json, read_json
from mliscan.picklepolicy import torch_load
from mliscan.stacks import unwrap_state_dict

METADATA_KEY = "mliscan"
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of a safetensors file (CPU) and its ``mliscan`` metadata object."""
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


def safetensors_reader(p: Path, prefix: str) -> Callable[[str], torch.Tensor]:
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


def load_sharded(
    index: Path, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a sharded checkpoint, each read from the shard its index names (the
    shards must agree with the index), and the first safetensors shard's metadata."""
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
            part, meta = load_safetensors(shard)
            metadata = metadata or meta
        else:
            part, _ = unwrap_state_dict(torch_load(shard, trust_pickle), shard)
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
