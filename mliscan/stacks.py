"""Training stacks' checkpoint layouts -> the network's own state dict.

Training scripts nest the weights (``state_dict``, ``model``, ``ema`` ... keys), prefix them
(``module.`` from DataParallel, ``_orig_mod.`` from torch.compile), keep them in a
LightningModule attribute (Lightning ``.ckpt``), or keep EMA weights beside the raw ones
(timm train.py's ``--model-ema``). These pure functions undo that; loading the file itself is
:mod:`mliscan.picklepolicy`'s concern.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mliscan.errors import CheckpointFormatError

# Keys under which training scripts commonly nest the weights, most specific first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema", "model_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")
# timm train.py keeps the EMA weights (--model-ema) beside the raw ones under these keys.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


def pick_ema(obj: Any, p: Path) -> Any:
    """``--ema``: the exponential-moving-average weights of a training checkpoint."""
    if isinstance(obj, dict):
        for key in EMA_KEYS:
            if isinstance(obj.get(key), dict):
                return obj[key]
    raise CheckpointFormatError(
        f"{p}: --ema asks for EMA weights, but the file holds none ({', '.join(EMA_KEYS)}); "
        "drop --ema"
    )


def is_lightning(obj: Any) -> bool:
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


def training_state_dict(
    obj: Any, p: Path, ema: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The network's state dict in a loaded training checkpoint (``ema``: its EMA weights),
    unwrapped and with a LightningModule's attribute prefix removed, and notes saying so."""
    tensors, notes = unwrap_state_dict(pick_ema(obj, p) if ema else obj, p)
    if is_lightning(obj):
        tensors, stripped_attr = strip_lightning_attribute(tensors)
        if stripped_attr:
            notes.append(f"stripped the LightningModule attribute prefix {stripped_attr!r}")
    return tensors, notes


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
