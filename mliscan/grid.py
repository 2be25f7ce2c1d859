"""Path families beyond init -> final (Section 4.3, Figures 6 and 8).

* unrelated initialisations -> an optimum (``compare --unrelated K``);
* all init-init, init-optimum (own and unrelated) and optimum-optimum pairs (``grid``).

Every path is evaluated by the same engine as ``compare`` and stored in a
:class:`~mliscan.store.ResultStore` under an id made of its endpoints' content hashes and the
evaluation settings, so an interrupted grid resumes where it stopped and torchrun ranks can
share the work (rank r takes every world-th path).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mliscan import metrics
from mliscan.adapter import Adapter, DataInfo
from mliscan.checkpoints import check_finite, check_pair, content_hash
from mliscan.errors import UsageError
from mliscan.evaluate import PathEvaluator, PreparedData, alpha_grid
from mliscan.paths import FINAL_FILE, INIT_FILE
from mliscan.spec import EvalSpec
from mliscan.store import ResultStore, path_id

FAMILIES = ("init-init", "init-optimum", "optimum-optimum")
# Fresh initialisations sampled for a grid use seeds from here on, away from training seeds.
FRESH_SEED_BASE = 1_000_000

PATH_SCHEMA = {
    "path_id": "str",
    "family": "str",
    "a": "str",
    "b": "str",
    "own_pair": "bool",
    "min_delta": "f64",
    "monotonic": "bool",
    "barrier": "f64",
    "distance": "f64",
    "normalized_distance": "f64",
    "loss_a": "f64",
    "loss_b": "f64",
}
CURVE_SCHEMA = {
    "path_id": "str",
    "family": "str",
    "a": "str",
    "b": "str",
    "alpha": "f64",
    "loss": "f64",
    "accuracy": "f64",
}


@dataclass
class Endpoint:
    label: str
    kind: str
    """'init' or 'optimum'."""
    run: str | None
    tensors: dict[str, torch.Tensor]
    hash: str


@dataclass
class PathTask:
    family: str
    a: Endpoint
    b: Endpoint
    own_pair: bool | None
    pid: str


def fresh_init(
    adapter: Adapter, options: Any, info: DataInfo, seed: int
) -> dict[str, torch.Tensor]:
    """A new initialisation by the adapter's own scheme (torch's RNG seeded with ``seed``)."""
    torch.manual_seed(seed)
    module = adapter.build(options, info)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _endpoint(label: str, kind: str, run: str | None, tensors: dict[str, torch.Tensor]) -> Endpoint:
    return Endpoint(label, kind, run, tensors, content_hash(tensors))


def load_endpoint(path: Path, kind: str, label: str, run: str | None, adapter: Adapter) -> Endpoint:
    from mliscan.pipeline import open_source

    ckpt = open_source(str(path))  # a path, or an hf:/timm:/init: source
    check_finite(ckpt)
    return _endpoint(label, kind, run, adapter.map_keys(ckpt.tensors))


def gather_endpoints(
    runs: Sequence[Path],
    n_inits: int,
    n_optima: int,
    explicit_inits: Sequence[Path],
    explicit_optima: Sequence[Path],
    adapter: Adapter,
    options: Any,
    info: DataInfo,
) -> tuple[list[Endpoint], list[Endpoint]]:
    """Inits and optima: explicit files first, then the runs' pairs, then fresh inits."""
    inits = [
        load_endpoint(p, "init", f"init:{Path(p).stem}", None, adapter) for p in explicit_inits
    ]
    optima = [
        load_endpoint(p, "optimum", f"optimum:{Path(p).stem}", None, adapter)
        for p in explicit_optima
    ]
    for run in runs:
        name = run.name
        if len(inits) < n_inits:
            inits.append(load_endpoint(run / INIT_FILE, "init", f"init:{name}", name, adapter))
        if len(optima) < n_optima:
            optima.append(
                load_endpoint(run / FINAL_FILE, "optimum", f"optimum:{name}", name, adapter)
            )
    if len(optima) < n_optima:
        raise UsageError(
            f"--optima {n_optima} asks for more optima than the {len(optima)} available; "
            "train more runs or lower --optima"
        )
    seed = FRESH_SEED_BASE
    while len(inits) < n_inits:
        inits.append(
            _endpoint(f"init:fresh-{seed}", "init", None, fresh_init(adapter, options, info, seed))
        )
        seed += 1
    return inits, optima


def plan(
    inits: Sequence[Endpoint], optima: Sequence[Endpoint], settings: dict[str, Any]
) -> list[PathTask]:
    """All init-init pairs, all init-optimum pairs, all optimum-optimum pairs."""
    tasks: list[PathTask] = []

    def add(family: str, a: Endpoint, b: Endpoint, own: bool | None) -> None:
        tasks.append(PathTask(family, a, b, own, path_id(a.hash, b.hash, settings)))

    for a, b in itertools.combinations(inits, 2):
        add("init-init", a, b, None)
    for a in inits:
        for b in optima:
            add("init-optimum", a, b, a.run is not None and a.run == b.run)
    for a, b in itertools.combinations(optima, 2):
        add("optimum-optimum", a, b, None)
    return tasks


@dataclass
class Context:
    """What every path of a family shares: adapter, module, data and settings."""

    adapter: Adapter
    module: torch.nn.Module
    data: PreparedData
    spec: EvalSpec

    def evaluate(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
        ev = PathEvaluator(self.adapter, self.module, a, b, self.data, self.spec)
        curve = ev.run(alpha_grid(self.spec.alphas))
        dist, norm = metrics.weight_distance(a, b, ev.roles.parameters)
        out = {
            "alphas": [float(x) for x in curve.alphas],
            "loss": [float(x) for x in curve.loss],
            "accuracy": None if curve.accuracy is None else [float(x) for x in curve.accuracy],
            "min_delta": metrics.min_delta(curve.loss),
            "barrier": metrics.barrier(curve.alphas, curve.loss),
            "distance": dist,
            "normalized_distance": norm,
        }
        if curve.gauss_integrand is not None:
            out["gauss_length"] = metrics.gauss_length(curve.alphas, curve.gauss_integrand)
        return out


def check_compatible(first: Endpoint, other: Endpoint) -> None:
    from mliscan.checkpoints import Checkpoint

    check_pair(
        Checkpoint(Path(first.label), first.tensors), Checkpoint(Path(other.label), other.tensors)
    )


def run_tasks(
    ctx: Context,
    tasks: Sequence[PathTask],
    store: ResultStore,
    rank: int = 0,
    world: int = 1,
    on_done: Callable[[PathTask, bool], None] | None = None,
) -> int:
    """Evaluate this rank's share of the missing paths; returns how many were computed."""
    computed = 0
    for i, task in enumerate(tasks):
        if i % world != rank:
            continue
        if store.has(task.pid):
            if on_done:
                on_done(task, False)
            continue
        record = ctx.evaluate(task.a.tensors, task.b.tensors)
        record.update(
            path_id=task.pid,
            family=task.family,
            a=task.a.label,
            b=task.b.label,
            a_hash=task.a.hash,
            b_hash=task.b.hash,
            own_pair=task.own_pair,
        )
        store.put(task.pid, _json_safe(record))
        computed += 1
        if on_done:
            on_done(task, True)
    return computed


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def tables(
    records: Sequence[dict[str, Any]], tolerance: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per path, one row per path and alpha), in a stable order."""
    order = {f: i for i, f in enumerate(FAMILIES)}
    recs = sorted(records, key=lambda r: (order[r["family"]], r["a"], r["b"]))
    paths, curves = [], []
    for r in recs:
        md = r["min_delta"]
        paths.append(
            {
                "path_id": r["path_id"],
                "family": r["family"],
                "a": r["a"],
                "b": r["b"],
                "own_pair": r["own_pair"],
                "min_delta": md,
                "monotonic": None if md is None else md <= tolerance,
                "barrier": r["barrier"],
                "distance": r["distance"],
                "normalized_distance": r["normalized_distance"],
                "loss_a": r["loss"][0],
                "loss_b": r["loss"][-1],
            }
        )
        accs = r["accuracy"] or [None] * len(r["alphas"])
        for alpha, loss, acc in zip(r["alphas"], r["loss"], accs, strict=True):
            curves.append(
                {
                    "path_id": r["path_id"],
                    "family": r["family"],
                    "a": r["a"],
                    "b": r["b"],
                    "alpha": alpha,
                    "loss": loss,
                    "accuracy": acc,
                }
            )
    return paths, curves


def summarise(paths: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for family in FAMILIES:
        rows = [p for p in paths if p["family"] == family]
        if not rows:
            continue
        mono = [p["monotonic"] for p in rows if p["monotonic"] is not None]
        barriers = [p["barrier"] for p in rows if p["barrier"] is not None]
        out.append(
            {
                "family": family,
                "paths": len(rows),
                "monotonic_share": (sum(mono) / len(mono)) if mono else float("nan"),
                "mean_barrier": float(np.mean(barriers)) if barriers else float("nan"),
                "mean_min_delta": float(
                    np.mean(
                        [p["min_delta"] for p in rows if p["min_delta"] is not None] or [np.nan]
                    )
                ),
            }
        )
    return out


def settings_of(
    spec: EvalSpec, data: dict[str, Any], arch: str, options: dict[str, Any]
) -> dict[str, Any]:
    """What a path's result depends on (its id); tolerance is applied at read time."""
    return json.loads(
        json.dumps(
            {
                "alphas": spec.alphas,
                "bn": spec.bn.describe(),
                "gauss": spec.gauss,
                "gauss_examples": spec.gauss_examples,
                "dtype": spec.dtype,
                "batch_size": spec.batch_size,
                "data": data,
                "arch": arch,
                "arch_options": options,
            },
            sort_keys=True,
        )
    )
