"""From two checkpoint paths to a finished pair result (the library form of ``compare``).

Checkpoint files -> architecture (``--arch`` or the files' mliscan metadata) -> module ->
data -> :class:`~mliscan.evaluate.PathEvaluator` -> metrics -> :class:`PairResult`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mliscan import metrics
from mliscan.adapter import Adapter, DataInfo, load_into
from mliscan.checkpoints import Checkpoint, check_finite, check_pair, load_checkpoint
from mliscan.data import Dataset, load_dataset
from mliscan.errors import DataError, UsageError
from mliscan.evaluate import (
    Curve,
    PathEvaluator,
    PreparedData,
    ProgressFn,
    alpha_grid,
    prepare_data,
    resolve_device,
)
from mliscan.registry import get_adapter, names
from mliscan.spec import DEFAULT_TOLERANCE, DataSpec, EvalSpec


@dataclass
class ModelChoice:
    """The architecture, its parsed options and where they came from."""

    adapter: Adapter
    options: Any
    source: str
    """'cli', 'metadata' or 'inferred'."""


def choose_model(
    init: Checkpoint, arch: str | None, given_options: Mapping[str, Any]
) -> ModelChoice:
    """``--arch`` and options given win; otherwise the file's mliscan metadata; options not
    given are then read off the checkpoint's shapes where the adapter can."""
    meta = init.metadata
    source = "cli"
    if arch is None:
        arch = meta.get("arch")
        source = "metadata"
        if arch is None:
            raise UsageError(
                f"{init.path} carries no mliscan metadata naming its architecture; pass "
                f"--arch (one of {', '.join(names())})"
            )
    adapter = get_adapter(arch)
    opts: dict[str, Any] = {}
    if source == "metadata" or meta.get("arch") == arch:
        opts.update(meta.get("arch_options", {}))
    inferred = adapter.infer_options(adapter.map_keys(init.tensors))
    for k, v in inferred.items():
        if k not in given_options and k not in opts:
            opts[k] = v
    opts.update(given_options)
    return ModelChoice(adapter, adapter.parse_options(opts), source)


@dataclass
class PairResult:
    init_path: str
    final_path: str
    arch: str
    arch_options: dict[str, Any]
    data: dict[str, Any]
    spec: EvalSpec
    curve: Curve
    tolerance: float
    distance: float
    normalized_distance: float
    device: str
    notes: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    unrelated: list[Curve] = field(default_factory=list)
    """Curves from fresh initialisations (seeds ``unrelated_seeds``) to the same final."""
    unrelated_seeds: list[int] = field(default_factory=list)

    @property
    def min_delta(self) -> float:
        return metrics.min_delta(self.curve.loss)

    @property
    def monotonic(self) -> bool | None:
        return metrics.is_monotonic(self.min_delta, self.tolerance)

    @property
    def barrier(self) -> float:
        return metrics.barrier(self.curve.alphas, self.curve.loss)

    @property
    def gauss_length(self) -> float | None:
        if self.curve.gauss_integrand is None:
            return None
        return metrics.gauss_length(self.curve.alphas, self.curve.gauss_integrand)


def resolve_data(init: Checkpoint, adapter: Adapter, given: Mapping[str, Any]) -> DataSpec:
    """Given fields win; then the data the file was trained on (its metadata: name and
    subset); then the adapter's default dataset. The split defaults to train."""
    meta = init.metadata.get("data") or {}
    name = given.get("name") or meta.get("name") or adapter.default_data
    limit = given.get("limit")
    if limit is None and meta.get("name") == name:
        limit = meta.get("limit")
    return DataSpec(
        name=name,
        data_dir=given.get("data_dir"),
        split=given.get("split") or "train",
        limit=limit,
    )


def build_module(
    choice: ModelChoice, dataset: Dataset, ckpt: Checkpoint
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    info = DataInfo(dataset.input_shape, dataset.num_classes)
    try:
        module = choice.adapter.build(choice.options, info)
    except (ValueError, RuntimeError) as exc:
        raise DataError(
            f"--arch {choice.adapter.name} cannot be built for this data: {exc}"
        ) from exc
    tensors = choice.adapter.map_keys(ckpt.tensors)
    load_into(module, tensors, str(ckpt.path), choice.adapter.name)
    return module, tensors


@dataclass
class Setup:
    """Everything shared by the paths of one study: architecture, module, data, device."""

    choice: ModelChoice
    dataset: Dataset
    data_spec: DataSpec
    module: torch.nn.Module
    prepared: PreparedData
    device: torch.device

    @property
    def info(self) -> DataInfo:
        return DataInfo(self.dataset.input_shape, self.dataset.num_classes)

    def data_record(self) -> dict[str, Any]:
        return {
            "name": self.dataset.name,
            "split": self.dataset.split,
            "examples": len(self.dataset),
            "limit": self.data_spec.limit,
            "data_dir": self.data_spec.data_dir,
        }


def setup(
    first: Checkpoint,
    arch: str | None,
    arch_options: Mapping[str, Any] | None,
    data: DataSpec | Mapping[str, Any] | None,
    spec: EvalSpec,
) -> Setup:
    """Architecture (flag or metadata), data (flags, metadata, adapter default), module, device."""
    choice = choose_model(first, arch, arch_options or {})
    data_spec = (
        data if isinstance(data, DataSpec) else resolve_data(first, choice.adapter, data or {})
    )
    dataset = load_dataset(data_spec)
    module, _ = build_module(choice, dataset, first)
    device = resolve_device(spec.device)
    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    module = module.to(device=device, dtype=dtype)
    prepared = prepare_data(choice.adapter, dataset.inputs, dataset.targets, device, dtype)
    return Setup(choice, dataset, data_spec, module, prepared, device)


def compare_pair(
    init_path: str,
    final_path: str,
    *,
    arch: str | None = None,
    arch_options: Mapping[str, Any] | None = None,
    data: DataSpec | Mapping[str, Any] | None = None,
    spec: EvalSpec | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: ProgressFn | None = None,
    unrelated_seeds: Sequence[int] = (),
    trust_pickle: bool = False,
) -> PairResult:
    """Evaluate the straight path from ``init_path`` to ``final_path``."""
    spec = spec or EvalSpec()
    t_start = time.perf_counter()
    init = load_checkpoint(init_path, trust_pickle)
    final = load_checkpoint(final_path, trust_pickle)
    check_pair(init, final)
    check_finite(init)
    check_finite(final)
    ctx = setup(init, arch, arch_options, data, spec)
    choice = ctx.choice
    theta0 = choice.adapter.map_keys(init.tensors)
    theta1 = choice.adapter.map_keys(final.tensors)
    evaluator = PathEvaluator(choice.adapter, ctx.module, theta0, theta1, ctx.prepared, spec)
    distance, normalized = metrics.weight_distance(theta0, theta1, evaluator.roles.parameters)
    t_loaded = time.perf_counter()
    curve = evaluator.run(alpha_grid(spec.alphas), progress=progress)
    unrelated = []
    for seed in unrelated_seeds:  # Figure 6: unrelated initialisations -> the same optimum
        from mliscan.grid import fresh_init

        start = fresh_init(choice.adapter, choice.options, ctx.info, seed)
        start = {k: v.to(theta0[k].dtype) for k, v in start.items()}
        ev = PathEvaluator(choice.adapter, ctx.module, start, theta1, ctx.prepared, spec)
        unrelated.append(ev.run(alpha_grid(spec.alphas), gauss=False))
    timing = {"load": t_loaded - t_start, **curve.timing}
    timing["total"] = time.perf_counter() - t_start
    notes = [f"init: {n}" for n in init.notes] + [f"final: {n}" for n in final.notes]
    if all(torch.equal(theta0[k], theta1[k]) for k in evaluator.roles.interpolated):
        notes.append("init and final weights are identical: the path is a single point")
    return PairResult(
        init_path=str(init.path),
        final_path=str(final.path),
        arch=choice.adapter.name,
        arch_options=choice.adapter.options_to_dict(choice.options),
        data=ctx.data_record(),
        spec=spec,
        curve=curve,
        tolerance=tolerance,
        distance=distance,
        normalized_distance=normalized,
        device=str(ctx.device),
        notes=notes,
        timing=timing,
        unrelated=unrelated,
        unrelated_seeds=list(unrelated_seeds),
    )
