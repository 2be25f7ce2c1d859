"""Fresh initialisations of a source's architecture (``init:SOURCE?seed=S``), cached.

The source layer resolves ``init:SOURCE`` to SOURCE's files; this module, which may use the
adapters, builds the architecture from SOURCE's config.json with the seed and caches the
weights with the config and tokenizer files beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from mliscan.adapter import DataInfo, tied_aliases
from mliscan.checkpoints import read_config
from mliscan.errors import UsageError
from mliscan.paths import mliscan_cache_dir
from mliscan.registry import adapter_for_config
from mliscan.sources import CONFIG_FILES, TOKENIZER_FILES, Resolved


def materialize(resolved: Resolved) -> Resolved:
    """An ``init:`` resolution with its path at the cached fresh weights (built if missing)."""
    if resolved.kind != "init" or resolved.base is None:
        return resolved
    text, base, seed = resolved.text, resolved.base, resolved.seed or 0
    base_text = base.text
    folder = base.path if base.path.is_dir() else base.path.parent
    config = read_config(folder / "config.json")
    if config is None:
        raise UsageError(
            f"{text}: {base_text} has no config.json to build a fresh model from; init: works "
            "for hf:, timm: and transformers/timm folders (for mliscan's own checkpoints use "
            "compare --unrelated K)"
        )
    adapter = adapter_for_config(config, str(folder / "config.json"))
    key = _init_key(base, folder, seed, adapter.name)
    out = mliscan_cache_dir() / "init" / key
    if not (out / "model.safetensors").is_file():
        materialize_init(adapter, config, folder, seed, out)
    return replace(resolved, path=out)


def _init_key(base: Resolved, folder: Path, seed: int, arch: str) -> str:
    import torch

    versions: dict[str, str | None] = {"torch": torch.__version__}
    for mod in ("transformers", "timm"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            versions[mod] = None
    config_bytes = (folder / "config.json").read_bytes()
    ident = {
        "config": hashlib.sha256(config_bytes).hexdigest(),
        "seed": seed,
        "arch": arch,
        "names": 2,  # the tensors are stored under the source file's own names
        "versions": versions,
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base.repo or folder.name).strip("-")[:60]
    return f"{slug}-seed{seed}-{digest}"


def _file_keys(folder: Path) -> list[str] | None:
    """The tensor names of the source's weights file (safetensors header or shard index;
    None when there is no such file)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    try:
        if single.is_file():
            from safetensors import safe_open

            with safe_open(str(single), framework="pt") as f:
                return list(f.keys())
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            return list(weight_map) if isinstance(weight_map, dict) else None
    except (OSError, ValueError, RuntimeError):  # unreadable: fall back to the default names
        return None
    return None


def _as_named_in(folder: Path, adapter: Any, options: Any, state: dict[str, Any]) -> dict:
    """The fresh module's tensors under the names the source's own file uses (transformers
    saves GPT-NeoX's head as ``embed_out``), so the fresh init pairs with the source key for
    key; names the source lacks get the adapter's default (``unmap_keys``)."""
    default = adapter.unmap_keys(state)
    keys = _file_keys(folder)
    if not keys:
        return default
    to_file = {}
    for name in keys:  # one at a time: a name the mapping drops pairs with nothing
        for module_name in adapter.map_keys({name: None}, options):
            to_file[module_name] = name
    return {to_file.get(k, d): v for (k, v), d in zip(state.items(), default, strict=True)}


def materialize_init(adapter: Any, config: dict, folder: Path, seed: int, out: Path) -> None:
    """Build the architecture fresh (seeded), save it with its config and tokenizer files,
    and move the folder into place atomically."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    options = adapter.parse_options(adapter.options_from_config(config))
    with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
        torch.manual_seed(seed)
        module = adapter.build(options, DataInfo((), 0))
    aliases = tied_aliases(module)
    state = {k: v for k, v in module.state_dict().items() if k not in aliases}
    state = _as_named_in(folder, adapter, options, state)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=out.parent))
    try:
        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        meta = {"mliscan_init": json.dumps({"seed": seed, "arch": adapter.name})}
        save_file(tensors, str(tmp / "model.safetensors"), metadata=meta)
        for name in (*CONFIG_FILES, *TOKENIZER_FILES, "preprocessor_config.json"):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
        try:
            os.replace(tmp, out)
        except OSError:  # another process materialised it first
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
