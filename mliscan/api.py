"""The Python API: ``mliscan.compare``, ``mliscan.grid`` and ``mliscan.track``.

The same specs and the same runner as the command line: a value a command would refuse is
refused here with the same message (naming the argument), and the same inputs give the same
numbers as ``mliscan compare``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mliscan import spec as S
from mliscan.checkpoints import Checkpoint, check_finite
from mliscan.custom import LossFn, ModuleAdapter, OutputFn
from mliscan.data import DATASETS, Dataset
from mliscan.errors import DataError, UsageError
from mliscan.pipeline import compare_checkpoints, compare_pair, open_source
from mliscan.results import CURVE_SCHEMA, PATH_SCHEMA, PathResult, curve_rows

Endpoint = str | Path | nn.Module | dict
Data = str | tuple | torch.utils.data.Dataset | torch.utils.data.DataLoader | None
# The Python argument each spec field is set by (named in errors instead of the flag).
_ARGUMENTS = {
    S.EvalSpec: {
        "alphas": "alphas=",
        "gauss": "gauss=",
        "batch_size": "batch_size=",
        "device": "device=",
        "dtype": "dtype=",
        "gauss_examples": "gauss_examples=",
    },
    S.BNSpec: {"mode": "bn=", "batch_size": "bn_batch_size="},
    S.DataSpec: {"limit": "data_limit=", "name": "data="},
    S.VerdictSpec: {"tol": "tol="},
}


def _specs(
    alphas: int,
    gauss: bool,
    bn: str,
    bn_batch_size: int | None,
    batch_size: int | None,
    device: str,
    dtype: str,
    gauss_examples: int | None,
    tol: float,
) -> tuple[S.EvalSpec, float]:
    bn_spec = S.build(S.BNSpec, {"mode": bn, "batch_size": bn_batch_size}, _ARGUMENTS[S.BNSpec])
    ev = S.build(
        S.EvalSpec,
        {
            "alphas": alphas,
            "gauss": gauss,
            "bn": bn_spec,
            "batch_size": batch_size,
            "device": device,
            "dtype": dtype,
            "gauss_examples": gauss_examples,
        },
        _ARGUMENTS[S.EvalSpec],
    )
    verdict = S.build(S.VerdictSpec, {"tol": tol}, _ARGUMENTS[S.VerdictSpec])
    return ev, verdict.tol


def _checkpoint(x: Endpoint, role: str, source: S.SourceSpec) -> Checkpoint:
    """A path or source string, a state dict, or a module's current weights."""
    if isinstance(x, (str, Path)):
        return open_source(str(x), source.trust_pickle, source.offline, source.ema)
    if isinstance(x, nn.Module):
        tensors = {k: v.detach().cpu().clone() for k, v in x.state_dict().items()}
    elif isinstance(x, dict):
        bad = [k for k, v in x.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise UsageError(f"{role}: a state dict maps names to tensors; {bad[0]!r} does not")
        tensors = {k: v.detach().cpu() for k, v in x.items()}
    else:
        raise UsageError(
            f"{role}: expected a path, a source string (hf:, timm:, init:), a state dict or an "
            f"nn.Module, got {type(x).__name__}"
        )
    ckpt = Checkpoint(path=Path(f"<{role}>"), tensors=tensors)
    check_finite(ckpt)
    return ckpt


# An endless DataLoader (or a huge one) is read up to this many examples when data_limit= is
# not given: past it, the call stops with a usage error asking for data_limit= instead of
# reading until memory runs out.
MAX_LOADER_EXAMPLES = 1_000_000


def _check_arguments(model: Any, loss: Any, data: Any, data_limit: Any) -> None:
    """The Python arguments the command line has no flag for, checked before any work."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"model= takes a torch nn.Module, got {type(model).__name__}")
        meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if meta:
            raise UsageError(
                f"model= has tensors on the meta device (no values), e.g. {meta[0]}: "
                "materialise the model (to_empty() and load its weights) first"
            )
    if loss is not None and not callable(loss):
        raise UsageError(f"loss= takes a function, got {type(loss).__name__}")
    S.build(S.DataSpec, {"limit": data_limit}, _ARGUMENTS[S.DataSpec])  # type and range
    if isinstance(data, str) and data not in DATASETS:
        raise UsageError(f"data={data!r}: not a dataset name; one of {', '.join(DATASETS)}")
    kinds = (str, tuple, torch.utils.data.Dataset, torch.utils.data.DataLoader)
    if data is not None and not isinstance(data, kinds):
        raise UsageError(
            "data= takes a dataset name, a tuple (X, y) of tensors, a torch Dataset or a "
            f"DataLoader, got {type(data).__name__}"
        )


def _batches(data: Any, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A Dataset's or DataLoader's (inputs, targets), every batch of the same shapes."""
    if isinstance(data, torch.utils.data.DataLoader):
        items: Any = data
    else:
        items = torch.utils.data.DataLoader(data, batch_size=256, shuffle=False)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    count = 0
    for i, batch in enumerate(items):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise UsageError("data= must yield (inputs, targets) pairs")
        x = batch[0]
        try:
            y = torch.as_tensor(batch[1])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UsageError(f"data=: the targets of batch {i} are not a tensor ({exc})") from exc
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise UsageError(
                f"data=: batch {i} must be (inputs, targets) tensors with one row per example, "
                f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))} and targets "
                f"{tuple(y.shape)}"
            )
        if xs and (x.shape[1:] != xs[0].shape[1:] or y.shape[1:] != ys[0].shape[1:]):
            raise UsageError(
                f"data=: batch {i} holds inputs {tuple(x.shape[1:])} and targets "
                f"{tuple(y.shape[1:])} per example, batch 0 {tuple(xs[0].shape[1:])} and "
                f"{tuple(ys[0].shape[1:])}: every example needs the same shape (pad or crop)"
            )
        xs.append(x)
        ys.append(y)
        count += len(x)
        if limit is not None and count >= limit:
            break
        if limit is None and count > MAX_LOADER_EXAMPLES:
            raise UsageError(
                f"data= yielded more than {MAX_LOADER_EXAMPLES:,} examples without ending "
                "(an endless loader?): pass data_limit=N"
            )
    if not xs:
        raise DataError("data= holds no examples")
    return torch.cat(xs), torch.cat(ys)


def _dataset(data: Data, limit: int | None, class_targets: bool = False) -> Dataset | None:
    """Tensors (X, y), a torch Dataset or a DataLoader as an in-memory dataset.

    ``class_targets``: the loss is the default cross-entropy of a ``model=``, so the targets
    must be class indices (one integer >= 0 per example)."""
    if data is None or isinstance(data, str):
        return None
    if isinstance(data, tuple):
        if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise UsageError("data=(X, y) takes two tensors: inputs and targets")
        x, y = data
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise DataError(
                f"data=(X, y): {tuple(x.shape)} inputs and {tuple(y.shape)} targets; both need "
                "one row per example"
            )
    else:
        x, y = _batches(data, limit)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"data=: {len(x)} inputs but {len(y)} targets")
    if x.is_meta or y.is_meta:
        raise UsageError("data= holds meta tensors (no values)")
    if class_targets:
        _check_class_targets(y)
    if x.is_floating_point():
        x = x.float()
    classes = int(y.max()) + 1 if not y.is_floating_point() and y.dim() == 1 else 0
    return Dataset("python", "train", x.contiguous(), y, classes)


def _check_class_targets(y: torch.Tensor) -> None:
    """Targets of the default loss (cross-entropy): one class index >= 0 per example."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
        raise UsageError(
            f"data=: the targets are {str(y.dtype).removeprefix('torch.')} of shape "
            f"{tuple(y.shape)}; the default loss (cross-entropy) takes one class index per "
            "example (a 1-D integer tensor, e.g. y.long()); give loss= for other targets"
        )
    if int(y.min()) < 0:
        raise UsageError(f"data=: class indices must be >= 0, found {int(y.min())}")


def _per_example(loss: LossFn | None, classes: int) -> LossFn:
    """The loss of a ``model=``, checked on its first call: the default cross-entropy with
    every class index below the model's output width, a user's loss one value per example."""

    def checked(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if loss is None:
            if output.dim() == 2 and output.shape[1] < classes:
                raise UsageError(
                    f"data=: the targets go up to class {classes - 1}, but the model has "
                    f"{output.shape[1]} outputs"
                )
            return nn.functional.cross_entropy(output, target, reduction="none")
        value = loss(output, target)
        if isinstance(value, torch.Tensor) and value.dim() == 1 and len(value) != len(target):
            raise UsageError(
                f"loss= returned {len(value)} values for a batch of {len(target)} examples; it "
                "must give one loss per example (reduction='none')"
            )
        return value

    return checked


def compare(
    init: Endpoint,
    final: Endpoint,
    *,
    model: nn.Module | None = None,
    arch: str | None = None,
    arch_options: dict[str, Any] | None = None,
    data: Data = None,
    data_limit: int | None = None,
    loss: LossFn | None = None,
    output: OutputFn | None = None,
    alphas: int = S.DEFAULT_ALPHAS,
    gauss: bool = True,
    tol: float = S.DEFAULT_TOLERANCE,
    bn: str = "exact",
    bn_batch_size: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    gauss_examples: int | None = None,
    offline: bool = False,
    trust_pickle: bool = False,
    ema: bool = False,
    progress: Callable[[int, float, float], None] | None = None,
) -> PathResult:
    """The straight path from ``init`` (alpha = 0) to ``final`` (alpha = 1).

    ``init``/``final``: a checkpoint file or folder, a source string (``hf:ORG/NAME@REV``,
    ``timm:NAME``, ``init:SOURCE``), a state dict, or an ``nn.Module`` (its current weights).
    ``model``: an ``nn.Module`` used as the architecture (no adapter needed; its output is
    the logits); otherwise ``arch`` names an adapter, or the files' metadata does.
    ``data``: a dataset name (``"digits"``), a torch Dataset or DataLoader of (input,
    target) pairs, or a tuple of tensors ``(X, y)``. ``loss``: a callable giving one loss
    per example (cross-entropy by default). ``output``: a callable from ``model``'s output
    to its logits (by default the output itself, ``output["logits"]`` / ``output.logits``,
    or a tuple's first element). The rest are the command line's options.

    Returns a :class:`mliscan.PathResult` (``.min_delta``, ``.monotonic``, ``.distance``,
    ``.normalized_distance``, ``.gauss_length``, ``.barrier``, ``.to_dict()``,
    ``.to_polars()``, ``.plot()``). The same inputs give the numbers ``mliscan compare``
    gives.

    Example::

        import mliscan, torch
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        init = {k: v.clone() for k, v in net.state_dict().items()}
        # ... train net ...
        r = mliscan.compare(init, net, model=net, data=(X, y), alphas=25)
        print(r.min_delta, r.monotonic, r.barrier)
    """
    _check_arguments(model, loss, data, data_limit)
    ev, tolerance = _specs(
        alphas, gauss, bn, bn_batch_size, batch_size, device, dtype, gauss_examples, tol
    )
    source = S.SourceSpec(trust_pickle=trust_pickle, offline=offline, ema=ema)
    dataset = _dataset(data, data_limit, class_targets=model is not None and loss is None)
    if model is not None and dataset is not None:
        loss = _per_example(loss, dataset.num_classes)
    data_spec = None
    if dataset is None:
        data_spec = S.build(S.DataSpec, {"name": data, "limit": data_limit}, _ARGUMENTS[S.DataSpec])
    if model is not None and arch is not None:
        raise UsageError("model= takes the place of arch=: give one of them")
    adapter: Any = ModuleAdapter(model, loss, output) if model is not None else None
    if loss is not None and adapter is None:
        raise UsageError("loss= goes with model= (the adapters define their own losses)")
    if output is not None and adapter is None:
        raise UsageError("output= goes with model= (the adapters define their own logits)")
    if output is not None and not callable(output):
        raise UsageError(f"output= takes a function, got {type(output).__name__}")
    plain = isinstance(init, (str, Path)) and isinstance(final, (str, Path))
    if plain and adapter is None and dataset is None:  # exactly what the command line runs
        return compare_pair(
            str(init),
            str(final),
            arch=arch,
            arch_options=arch_options,
            data=data_spec,
            spec=ev,
            tolerance=tolerance,
            progress=progress,
            source=source,
        )
    a = _checkpoint(init, "init", source)
    b = _checkpoint(final, "final", source)
    return compare_checkpoints(
        a,
        b,
        arch=adapter if adapter is not None else arch,
        arch_options=arch_options,
        data=dataset if dataset is not None else data_spec,
        spec=ev,
        tolerance=tolerance,
        progress=progress,
    )


def grid(
    inits: Sequence[Endpoint],
    optima: Sequence[Endpoint],
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Every init-init, init-optimum and optimum-optimum path (Figure 8) with the options of
    :func:`compare` (without the Gauss length unless ``gauss=True``).

    Returns two polars frames: one row per path (``paths.parquet``'s columns: family, a, b,
    own_pair, min_delta, monotonic, barrier, distance, ...) and one row per path and alpha.

    Example::

        paths, curves = mliscan.grid(["a/init.safetensors", "b/init.safetensors"],
                                     ["a/final.safetensors"], alphas=25)
    """
    import itertools

    import polars as pl

    for name, value in (("inits", inits), ("optima", optima)):
        if isinstance(value, (str, Path, nn.Module, dict)):
            raise UsageError(
                f"grid: {name} takes a list of endpoints, got one {type(value).__name__} "
                f"(write [{name[:-1] if name == 'inits' else 'optimum'}])"
            )
    kwargs.setdefault("gauss", False)
    ends = [(f"init{i}", "init", x) for i, x in enumerate(inits)]
    ends += [(f"optimum{i}", "optimum", x) for i, x in enumerate(optima)]
    pairs = [("init-init", a, b) for a, b in itertools.combinations(ends[: len(inits)], 2)]
    pairs += [("init-optimum", a, b) for a in ends[: len(inits)] for b in ends[len(inits) :]]
    pairs += [("optimum-optimum", a, b) for a, b in itertools.combinations(ends[len(inits) :], 2)]
    if not pairs:
        raise UsageError("grid needs at least two endpoints (inits and optima together)")
    rows, curves = [], []
    for family, (la, _, xa), (lb, _, xb) in pairs:
        r = compare(xa, xb, **kwargs)
        labels = {
            "path_id": f"{la}-{lb}",
            "family": family,
            "a": la,
            "b": lb,
            "own_pair": family == "init-optimum" and la[4:] == lb[7:],
        }
        rows.append(r.to_row(**labels))
        curves += curve_rows({**r.stored(), **labels})
    types = {"str": pl.Utf8, "f64": pl.Float64, "bool": pl.Boolean}
    return (
        pl.DataFrame(rows, schema={k: types[v] for k, v in PATH_SCHEMA.items()}, orient="row"),
        pl.DataFrame(curves, schema={k: types[v] for k, v in CURVE_SCHEMA.items()}, orient="row"),
    )


@dataclass
class Tracker:
    """What ``mliscan.track`` records: theta_0 on entry, the result on exit."""

    module: nn.Module
    options: dict[str, Any]
    init: dict[str, torch.Tensor] = field(default_factory=dict)
    result: PathResult | None = None

    def measure(self) -> PathResult:
        """The path from the weights at entry to the module's current weights."""
        self.result = compare(self.init, self.module, model=self.module, **self.options)
        return self.result


@contextmanager
def track(module: nn.Module, data: Data, **options: Any) -> Iterator[Tracker]:
    """Record ``module``'s weights on entry and measure the path to its weights on exit.

    Example::

        with mliscan.track(net, (X, y), alphas=25) as t:
            for epoch in range(10):
                train_one_epoch(net)
        print(t.result.min_delta, t.result.monotonic)
    """
    _check_arguments(module, options.get("loss"), data, options.get("data_limit"))
    if module is None:
        raise UsageError("track: module= takes the torch nn.Module being trained, got None")
    if not isinstance(data, str) and data is not None:  # read now: a bad data= fails first
        ds = _dataset(data, options.get("data_limit"), class_targets=options.get("loss") is None)
        data = (ds.inputs, ds.targets) if ds is not None else data
    tracker = Tracker(module, {"data": data, **options})
    tracker.init = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    was_training = module.training
    yield tracker
    tracker.measure()
    module.train(was_training)


__all__ = ["PathResult", "Tracker", "compare", "grid", "track"]
