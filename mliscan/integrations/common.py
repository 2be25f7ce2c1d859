"""What the framework callbacks share: theta_0 kept on the CPU, a bounded sample of the
training data, the measurement, its files and the gate."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mliscan.api import compare
from mliscan.checkpoints import save_checkpoint
from mliscan.paths import atomic_write_json
from mliscan.results import PathResult

# A few thousand examples give a stable curve in seconds (the paper uses the whole set).
DEFAULT_MAX_EXAMPLES = 2048


class MLIGateError(RuntimeError):
    """The path failed a threshold the callback was given (fail_on_nonmonotonic, max_delta)."""


@dataclass
class MLISettings:
    max_examples: int = DEFAULT_MAX_EXAMPLES
    alphas: int = 25
    gauss: bool = False
    tol: float = 0.0
    fail_on_nonmonotonic: bool = False
    max_delta: float | None = None
    loss: Any = None

    def __post_init__(self) -> None:
        if self.max_examples < 2:
            raise ValueError(f"max_examples must be at least 2, got {self.max_examples}")
        if self.max_delta is not None and not self.max_delta >= 0:
            raise ValueError(f"max_delta must be >= 0, got {self.max_delta}")


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def sample(batches: Iterable[Any], limit: int, inputs: Any = None) -> tuple[Any, Any]:
    """Up to ``limit`` (input, target) examples from a dataloader's batches; ``inputs``
    turns a batch into (X, y) when batches are not (X, y) pairs."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    count = 0
    for batch in batches:
        x, y = inputs(batch) if inputs is not None else (batch[0], batch[1])
        xs.append(torch.as_tensor(x).detach().cpu())
        ys.append(torch.as_tensor(y).detach().cpu())
        count += len(xs[-1])
        if count >= limit:
            break
    if not xs:
        raise ValueError("the training data yielded no batches to measure the path on")
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


def measure(
    init: dict[str, torch.Tensor],
    model: nn.Module,
    data: tuple[Any, Any],
    settings: MLISettings,
) -> PathResult:
    """The path from ``init`` to ``model``'s weights, the model copied (never modified)."""
    copied = copy.deepcopy(model)
    return compare(
        init,
        cpu_state(copied),
        model=copied,
        data=data,
        loss=settings.loss,
        alphas=settings.alphas,
        gauss=settings.gauss,
        tol=settings.tol,
        device="cpu",
    )


def metrics_of(result: PathResult, gauss: bool) -> dict[str, float]:
    out = {
        "mli/min_delta": result.min_delta,
        "mli/monotonic": float(bool(result.monotonic)),
        "mli/distance": result.distance,
        "mli/normalized_distance": result.normalized_distance,
        "mli/barrier": result.barrier,
    }
    if gauss and result.gauss_length is not None:
        out["mli/gauss_length"] = result.gauss_length
    return {k: float(v) for k, v in out.items()}


def write_files(
    folder: Path,
    init: dict[str, torch.Tensor],
    model: nn.Module,
    result: PathResult,
    keys: Any = None,
) -> list[Path]:
    """init.safetensors, final.safetensors and mli.json in ``folder``; ``keys`` renames the
    tensors (a LightningModule's attribute prefix dropped: the network's own names)."""
    folder.mkdir(parents=True, exist_ok=True)
    rename = keys or (lambda state: state)
    save_checkpoint(folder / "init.safetensors", _contiguous(rename(init)), {"role": "init"})
    final = _contiguous(rename(cpu_state(model)))
    save_checkpoint(folder / "final.safetensors", final, {"role": "final"})
    atomic_write_json(folder / "mli.json", result.to_dict())
    return [folder / "init.safetensors", folder / "final.safetensors", folder / "mli.json"]


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Distinct, contiguous tensors (tied weights saved once per name, as safetensors wants)."""
    seen: dict[int, torch.Tensor] = {}
    out = {}
    for k, v in state.items():
        t = v.contiguous()
        out[k] = t.clone() if id(v) in seen else t
        seen[id(v)] = t
    return out


def gate(result: PathResult, settings: MLISettings) -> None:
    """Raise MLIGateError when a threshold fails."""
    failed = []
    if settings.fail_on_nonmonotonic and result.monotonic is not True:
        failed.append(f"the path is not monotonic (min-Δ {result.min_delta:.4g} > {settings.tol})")
    if settings.max_delta is not None and not result.min_delta <= settings.max_delta:
        failed.append(f"min-Δ {result.min_delta:.4g} exceeds max_delta {settings.max_delta}")
    if failed:
        raise MLIGateError("MLI check failed: " + "; ".join(failed))
