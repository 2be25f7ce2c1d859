"""Path families beyond init -> final (Section 4.3, Figures 6 and 8); the module behind ``mliscan grid``.

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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mliscan import metrics
from mliscan.adapter import Adapter, fresh_init
from mliscan.checkpoints import Checkpoint, check_finite, check_pair, content_hash
from mliscan.errors import UsageError
from mliscan.evaluate import PathEvaluator, PreparedData, alpha_grid
from mliscan.identity import key as identity_key
from mliscan.paths import (
    FINAL_FILE,
    INIT_FILE,
    RUN_FILE,
    SOURCE_PREFIXES,
    read_json,
    unique_labels,
)
from mliscan.pipeline import Session
from mliscan.record import PathRecord, as_record
from mliscan.results import curve_record, is_complete, num
from mliscan.spec import EvalSpec
from mliscan.store import ResultStore

FAMILIES = ("init-init", "init-optimum", "optimum-optimum")
# Fresh initialisations sampled for a grid use seeds from here on, away from training seeds.
FRESH_SEED_BASE = 1_000_000


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


def _endpoint(label: str, kind: str, run: str | None, tensors: dict[str, torch.Tensor]) -> Endpoint:
    return Endpoint(label, kind, run, tensors, content_hash(tensors))


def run_of(path: str) -> str | None:
    """The run folder an init or final file belongs to (None for other files and sources)."""
    p = Path(path)
    if str(path).startswith(SOURCE_PREFIXES) or p.name not in (INIT_FILE, FINAL_FILE):
        return None
    return str(p.resolve().parent)


def load_endpoint(
    path: Path | str | Checkpoint, kind: str, label: str, run: str | None, session: Session
) -> Endpoint:
    """An endpoint opened and mapped the one way (:meth:`Session.open`, :meth:`Session.state`):
    a path, an hf:/timm:/init: source, or a checkpoint loaded in Python."""
    if isinstance(path, Checkpoint):
        check_finite(path)
        ckpt = path
    else:
        ckpt = session.open(str(path))
    return _endpoint(label, kind, run, session.state(ckpt))


def gather_endpoints(
    runs: Sequence[Path],
    n_inits: int,
    n_optima: int,
    explicit_inits: Sequence[Path | str | Checkpoint],
    explicit_optima: Sequence[Path | str | Checkpoint],
    session: Session,
) -> tuple[list[Endpoint], list[Endpoint]]:
    """Inits and optima: explicit files first, then the runs' pairs, then fresh inits.

    Each endpoint is labelled by its run folder and role (``seed0/init``, ``seed0/final``),
    with parent folders added where two would read the same; an init and a final from one
    run folder (explicit or found) make an own pair."""
    files: list[tuple[str | Checkpoint, str]] = [(_given(p), "init") for p in explicit_inits]
    files += [(_given(p), "optimum") for p in explicit_optima]
    for run in runs:
        if sum(k == "init" for _, k in files) < n_inits:
            files.append((str(run / INIT_FILE), "init"))
        if sum(k == "optimum" for _, k in files) < n_optima:
            files.append((str(run / FINAL_FILE), "optimum"))
    texts = [_text(p) for p, _ in files]
    labels = named_by_settings(texts, unique_labels(texts))
    inits: list[Endpoint] = []
    optima: list[Endpoint] = []
    for (path, kind), text, label in zip(files, texts, labels, strict=True):
        of_run = None if isinstance(path, Checkpoint) else run_of(text)
        end = load_endpoint(path, kind, label, of_run, session)
        (inits if kind == "init" else optima).append(end)
    if len(optima) < n_optima:
        raise UsageError(
            f"--optima {n_optima} asks for more optima than the {len(optima)} available; "
            "train more runs or lower --optima"
        )
    seed = FRESH_SEED_BASE
    adapter, options = session.choice.adapter, session.choice.options
    while len(inits) < n_inits:
        fresh = fresh_init(adapter, options, session.info, seed)
        inits.append(_endpoint(f"fresh-{seed}/init", "init", None, fresh))
        seed += 1
    return inits, optima


def _given(p: Path | str | Checkpoint) -> str | Checkpoint:
    return p if isinstance(p, Checkpoint) else str(p)


def _text(p: str | Checkpoint) -> str:
    """What an endpoint is called: its path or source, or a loaded checkpoint's name."""
    return str(p.path) if isinstance(p, Checkpoint) else p


# The folders of a sweep's runs are named by a hash of their settings (sweep.run_name).
_SWEEP_RUN = re.compile(r"run-[0-9a-f]{8,}")
# Always named when a sweep run is: what a reader tells runs apart by (as `mliscan runs`).
_ALWAYS = ("optimizer", "lr", "seed")


def named_by_settings(paths: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Labels whose sweep-run folder (``run-5065a27d36b3``) is replaced by the run's own
    settings from its run.json: optimizer, lr, seed and the settings that differ between
    the runs given (``adam lr 0.01 bn=on seed 2/init``). A folder whose run.json cannot be
    read, or whose settings read the same as another's, keeps its name."""
    folders = [Path(p).parent for p in paths]
    configs: dict[Path, dict[str, Any]] = {}
    for folder in dict.fromkeys(folders):
        if _SWEEP_RUN.fullmatch(folder.name):
            config = _run_config(folder)
            if config is not None:
                configs[folder] = config
    if not configs:
        return list(labels)
    keys = list(dict.fromkeys(k for c in configs.values() for k in c))
    first = next(iter(configs.values()))
    varying = [k for k in keys if any(c.get(k) != first.get(k) for c in configs.values())]
    shown: list[str] = [k for k in ("optimizer", "lr") if k in keys]
    shown += [k for k in varying if k not in _ALWAYS] + [k for k in ("seed",) if k in keys]
    names = {f: _describe(c, shown) for f, c in configs.items()}
    clashing = {n for n in names.values() if list(names.values()).count(n) > 1}
    out = []
    for folder, label in zip(folders, labels, strict=True):
        name = names.get(folder)
        parts = label.split("/")
        if name is None or name in clashing or folder.name not in parts:
            out.append(label)
            continue
        out.append("/".join(name if part == folder.name else part for part in parts))
    return out


def _run_config(folder: Path) -> dict[str, Any] | None:
    """A sweep run's settings from its run.json, flat (adapter options by their name)."""
    try:
        record = read_json(folder / RUN_FILE)
    except (OSError, ValueError):
        return None
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict):
        return None
    flat: dict[str, Any] = {}
    for k, v in config.items():
        if k == "arch_options" and isinstance(v, dict):
            flat.update({str(a): b for a, b in v.items()})
        elif k == "data" and isinstance(v, dict):
            flat["data"] = v.get("name")
        elif k not in ("device", "save_every") and not isinstance(v, (dict, list)):
            flat[k] = v
    return flat


def _describe(config: dict[str, Any], keys: Sequence[str]) -> str:
    words = []
    for k in keys:
        v = config.get(k)
        if k == "optimizer":
            words.append(str(v))
        elif k in ("lr", "seed"):
            words.append(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}")
        else:
            shown = "on" if v is True else "off" if v is False else v
            words.append(f"{k}={shown}")
    return " ".join(words).replace("/", "-")


def plan(
    inits: Sequence[Endpoint], optima: Sequence[Endpoint], settings: dict[str, Any]
) -> list[PathTask]:
    """All init-init pairs, all init-optimum pairs, all optimum-optimum pairs."""
    tasks: list[PathTask] = []

    seen: set[str] = set()

    def add(family: str, a: Endpoint, b: Endpoint, own: bool | None) -> None:
        pid = identity_key("path", [a.hash, b.hash], settings)
        if pid not in seen:  # the same pair given twice is one path
            seen.add(pid)
            tasks.append(PathTask(family, a, b, own, pid))

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
    align: str = "none"

    def evaluate(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The stored record of the path a -> b (``PathRecord.to_stored``); with ``align``,
        of a -> b aligned to a, the unaligned path's numbers kept beside it."""
        alignment = None
        if self.align != "none":
            from mliscan.align import align

            stats = "with-statistics" if self.spec.bn.mode == "interpolate" else None
            aligned, alignment = align(self.adapter, self.module, a, b, stats)
            plain = self._curve(a, b, gauss=False)
            alignment.update(
                unaligned_distance=num(plain[2]),
                unaligned_barrier=num(metrics.barrier(plain[0].alphas, plain[0].loss)),
                unaligned_min_delta=num(metrics.min_delta(plain[0].loss)),
            )
            b = aligned
        curve, _, dist, norm = self._curve(a, b)
        return curve_record(curve, dist, norm, alignment=alignment).to_stored()

    def _curve(
        self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], gauss: bool | None = None
    ) -> tuple[Any, Any, float, float]:
        ev = PathEvaluator(self.adapter, self.module, a, b, self.data, self.spec)
        curve = ev.run(alpha_grid(self.spec.alphas), gauss=gauss)
        dist, norm = metrics.weight_distance(a, b, ev.roles.parameters)
        return curve, ev.roles, dist, norm


def check_compatible(first: Endpoint, other: Endpoint) -> None:
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
        if store.load(task.pid) is not None:
            if on_done:
                on_done(task, False)
            continue
        record = PathRecord.from_json(ctx.evaluate(task.a.tensors, task.b.tensors)).replace(
            path_id=task.pid,
            family=task.family,
            a=task.a.label,
            b=task.b.label,
            a_hash=task.a.hash,
            b_hash=task.b.hash,
            own_pair=task.own_pair,
        )
        store.put(task.pid, record)
        computed += 1
        if on_done:
            on_done(task, True)
    return computed


def tables(
    records: Sequence[PathRecord | dict[str, Any]], tolerance: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per path, one row per path and alpha), in a stable order; the paths judged
    at ``tolerance`` (records, or stored records as the store reads them)."""
    order = {f: i for i, f in enumerate(FAMILIES)}
    recs = sorted(
        (as_record(r, tolerance) for r in records),
        key=lambda r: (order[str(r.family)], str(r.a), str(r.b)),
    )
    paths = [r.to_row() for r in recs]
    curves = [row for r in recs for row in r.curve_rows()]
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
    """Everything a path's numbers depend on besides its endpoints (part of its identity);
    the tolerance is applied when reading, so it is not part of it."""
    return json.loads(
        json.dumps(
            {
                "eval": spec.numeric_settings(),
                "data": data,
                "arch": arch,
                "arch_options": options,
            },
            sort_keys=True,
            default=str,
        )
    )


def open_store(root: Path) -> ResultStore:
    """The grid's store: a record counts as done only when complete."""
    return ResultStore(root, valid=is_complete)
