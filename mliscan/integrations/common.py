"""What the framework callbacks share: theta_0 kept on the CPU, a bounded sample of the
training data (read without disturbing training), the measurement, its files and the gate."""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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


class BatchFormatError(TypeError):
    """A training batch the callback cannot turn into (inputs, targets)."""


class ShardedStrategyError(RuntimeError):
    """The training strategy shards the parameters across processes (FSDP, ZeRO stage 3):
    a callback there would measure one shard, not the model."""


def sharded_refusal(callback: str, strategy: str) -> ShardedStrategyError:
    return ShardedStrategyError(
        f"{callback} cannot run under {strategy}: each process holds only a shard of the "
        "parameters, so it would measure a shard, not the model; train with DDP or on one "
        "device, or save the initial and final weights as full checkpoints and run "
        "`mliscan compare` on them"
    )


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
    """A CPU copy of the module's state dict; tensors that share memory in the module (tied
    weights) share one copy, so ``save_pretrained`` and safetensors see the tie."""
    copies: dict[tuple[Any, ...], torch.Tensor] = {}
    out = {}
    for k, v in module.state_dict().items():
        view = (v.untyped_storage().data_ptr(), v.storage_offset(), v.shape, v.stride(), v.dtype)
        if view not in copies:
            copies[view] = v.detach().cpu().clone()
        out[k] = copies[view]
    return out


def tie_like(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` (read back from a file, every tensor separate) with the module's ties:
    keys that share memory in the module share one tensor."""
    first: dict[tuple[Any, ...], str] = {}
    out = dict(state)
    for k, v in module.state_dict().items():
        view = (v.untyped_storage().data_ptr(), v.storage_offset(), v.shape, v.stride(), v.dtype)
        if view in first and k in out and first[view] in out:
            out[k] = out[first[view]]
        first.setdefault(view, k)
    return out


@contextlib.contextmanager
def untouched(loader: Any) -> Iterator[None]:
    """Read from ``loader`` without changing what training will see: the global random
    states (torch, Python, NumPy) and the generators of the loader and its samplers are
    restored afterwards, so shuffling and augmentation are those of a run without the
    callback."""
    generators = []
    for owner in (
        loader,
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator):
            generators.append((gen, gen.get_state()))
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        for gen, state in generators:
            gen.set_state(state)


def _describe(batch: Any) -> str:
    if isinstance(batch, Mapping):
        return f"a dict with keys {', '.join(repr(k) for k in list(batch)[:6])}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)}"
    return f"a {type(batch).__name__}"


def _pair(batch: Any, inputs: Any, callback: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as (X, y) tensors, or a one-line error that names ``inputs=``."""
    if inputs is None:
        is_pair = isinstance(batch, (tuple, list)) and len(batch) >= 2
        if not is_pair or not all(isinstance(t, torch.Tensor) for t in batch[:2]):
            example = (
                "inputs=lambda batch: (batch['x'], batch['y'])"
                if isinstance(batch, Mapping)
                else "inputs=lambda batch: (x, y)"
            )
            raise BatchFormatError(
                f"{callback}: a training batch is {_describe(batch)}, not (inputs, targets) "
                f"tensors; pass {example} to say which parts of a batch are the model's "
                "inputs and the targets"
            )
        x, y = batch[0], batch[1]
    else:
        try:
            x, y = inputs(batch)
        except BatchFormatError:
            raise
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise BatchFormatError(
                f"{callback}: inputs= must turn a batch into (inputs, targets): {exc}"
            ) from exc
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise BatchFormatError(
            f"{callback}: a batch gave inputs {tuple(x.shape)} and targets {tuple(y.shape)}; "
            "both need one row per example (check inputs=)"
        )
    return x, y


def sample(
    batches: Iterable[Any], limit: int, inputs: Any = None, callback: str = "the callback"
) -> tuple[Any, Any]:
    """Up to ``limit`` (input, target) examples from a dataloader's batches, read without
    disturbing training (``untouched``); ``inputs`` turns a batch into (X, y) when batches
    are not (X, y) pairs. A batch of another shape is an error naming ``inputs=``."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    count = 0
    with untouched(batches):
        for batch in batches:
            x, y = _pair(batch, inputs, callback)
            xs.append(x.detach().cpu())
            ys.append(y.detach().cpu())
            count += len(xs[-1])
            if count >= limit:
                break
    if not xs:
        raise ValueError(f"{callback}: the training data yielded no batches to measure on")
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
    return [*write_pair(folder, init, model, keys), write_record(folder, result)]


def write_pair(
    folder: Path, init: dict[str, torch.Tensor], model: nn.Module, keys: Any = None
) -> list[Path]:
    """init.safetensors and final.safetensors (the model's weights now) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rename = keys or (lambda state: state)
    save_checkpoint(folder / "init.safetensors", contiguous(rename(init)), {"role": "init"})
    final = contiguous(rename(cpu_state(model)))
    save_checkpoint(folder / "final.safetensors", final, {"role": "final"})
    return [folder / "init.safetensors", folder / "final.safetensors"]


def write_record(folder: Path, result: PathResult) -> Path:
    atomic_write_json(folder / "mli.json", result.to_dict())
    return folder / "mli.json"


def contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Distinct, contiguous tensors (tied weights saved once per name, as safetensors wants)."""
    seen: dict[int, torch.Tensor] = {}
    out = {}
    for k, v in state.items():
        t = v.contiguous()
        out[k] = t.clone() if id(v) in seen else t
        seen[id(v)] = t
    return out


def failure(result: PathResult, settings: MLISettings) -> str | None:
    """The message of MLIGateError when a threshold fails, else None: the thresholds are
    ``mliscan check``'s (``gates.evaluate`` over the path's record), given as a GateSpec."""
    from mliscan.gates import evaluate
    from mliscan.spec import GateSpec

    thresholds = GateSpec(
        require_monotonic=settings.fail_on_nonmonotonic, max_delta=settings.max_delta
    )
    failed = [c for c in evaluate(result.record(), thresholds) if not c.passed]
    words = {
        "require_monotonic": "the path is not monotonic (min-Δ {observed} > {tol})",
        "max_delta": "min-Δ {observed} exceeds max_delta {limit}",
    }
    said = [
        words.get(c.name, "{description}: {observed}, allowed {allowed}").format(
            observed=_short(c.observed),
            tol=settings.tol,
            limit=settings.max_delta,
            description=c.description,
            allowed=c.allowed,
        )
        for c in failed
    ]
    return "MLI check failed: " + "; ".join(said) if said else None


def _short(value: Any) -> str:
    return "undefined" if value is None else f"{value:.4g}"


def gate(result: PathResult, settings: MLISettings) -> None:
    """Raise MLIGateError when a threshold fails."""
    message = failure(result, settings)
    if message is not None:
        raise MLIGateError(message)
