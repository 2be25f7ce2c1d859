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

    versions = {"torch": torch.__version__}
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
        "versions": versions,
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base.repo or folder.name).strip("-")[:60]
    return f"{slug}-seed{seed}-{digest}"


def materialize_init(adapter: Any, config: dict, folder: Path, seed: int, out: Path) -> None:
    """Build the architecture fresh (seeded), save it with its config and tokenizer files,
    and move the folder into place atomically."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    options = adapter.parse_options(adapter.options_from_config(config))
    torch.manual_seed(seed)
    module = adapter.build(options, DataInfo((), 0))
    aliases = tied_aliases(module)
    state = {k: v for k, v in module.state_dict().items() if k not in aliases}
    state = adapter.unmap_keys(state)
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
