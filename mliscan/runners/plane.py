"""The plane study (Figures 1, 9): the loss on a grid over the plane through three points,
stored point by point and resumable. ``mliscan plane`` and ``mliscan.plane`` both run
:func:`run_plane`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mliscan import planes as pl
from mliscan.adapter import Adapter
from mliscan.checkpoints import Checkpoint, check_finite, check_pair, content_hash
from mliscan.data import Dataset
from mliscan.evaluate import PathEvaluator
from mliscan.identity import key as identity_key
from mliscan.paths import atomic_write_json
from mliscan.pipeline import open_endpoint, setup
from mliscan.runners import PLANE_DEFAULTS
from mliscan.runners.events import SILENT, Events, resume_hint
from mliscan.schemas import PLANE_SCHEMA
from mliscan.shard import WHOLE, Shard, ShardLog
from mliscan.spec import AlignSpec, ArchSpec, DataSpec, EvalSpec, PlaneSpec, SourceSpec
from mliscan.store import ResultStore

Point = str | Path | Checkpoint


@dataclass(frozen=True)
class PlaneStudy:
    """Three points (A the origin, B, C) and the specs the plane is evaluated under."""

    a: Point
    b: Point
    c: Point
    out: Path
    source: SourceSpec = field(default_factory=SourceSpec)
    arch: ArchSpec | Adapter | str | None = None
    arch_options: dict[str, Any] | None = None
    data: DataSpec | Dataset = field(default_factory=DataSpec)
    eval: EvalSpec = field(default_factory=lambda: EvalSpec(**PLANE_DEFAULTS))
    plane: PlaneSpec = field(default_factory=PlaneSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    shard: Shard = WHOLE


@dataclass
class PlaneOutcome:
    """The plane's points (row-major, ``resolution`` per side) when all are stored."""

    complete: bool
    stored: int
    points_total: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    coords: dict[str, tuple[float, float]] = field(default_factory=dict)
    anchors: dict[str, float | None] = field(default_factory=dict)
    resolution: int = 0
    bounds: tuple[float, ...] = ()
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def undefined(self) -> int:
        """Points where the loss is NaN/Inf (null in the outputs)."""
        return sum(r["loss"] is None for r in self.rows)

    @property
    def files(self) -> list[str]:
        return ["plane.parquet", "plane.json"] if self.complete else []


def _name(p: Point) -> str:
    return str(p.path) if isinstance(p, Checkpoint) else str(p)


def _open(p: Point, source: SourceSpec) -> Checkpoint:
    if isinstance(p, Checkpoint):
        check_finite(p)
        return p
    return open_endpoint(str(p), source)


def run_plane(study: PlaneStudy, events: Events = SILENT) -> PlaneOutcome:
    """Evaluate this shard's missing points, store each as it is done, and when every point
    is stored write ``plane.parquet`` and ``plane.json``. A KeyboardInterrupt leaves the
    finished points stored and is re-raised with a ``resume_hint``."""
    spec, resolution, part, out = study.eval, study.plane.resolution, study.shard, study.out
    ckpts = [_open(p, study.source) for p in (study.a, study.b, study.c)]
    check_pair(ckpts[0], ckpts[1])
    check_pair(ckpts[0], ckpts[2])
    session = setup(ckpts[0], study.arch, study.arch_options, study.data, spec, study.source)
    adapter = session.choice.adapter
    states = [session.state(ck) for ck in ckpts]
    align = study.align.align
    alignments = {}
    if align != "none":  # B and C are permuted to match A before the plane is made
        from mliscan.align import align as weight_match

        for i, name in ((1, "B"), (2, "C")):
            states[i], alignments[name] = weight_match(
                adapter, session.module, states[0], states[i]
            )
    evaluator = PathEvaluator(adapter, session.module, states[0], states[1], session.prepared, spec)
    the_plane = pl.make_plane(states[0], states[1], states[2], evaluator.roles.interpolated)
    r = study.plane.range  # four numbers (PlaneSpec checks)
    bounds = pl.default_range(the_plane) if r is None else (r[0], r[1], r[2], r[3])
    hashes = [content_hash(s) for s in states]
    settings: dict[str, Any] = {
        "bounds": list(bounds),
        "resolution": resolution,
        "eval": spec.numeric_settings(),
        "data": session.data_record(),
        "arch": adapter.name,
        "arch_options": adapter.options_to_dict(session.choice.options),
    }
    if align != "none":
        settings["align"] = align

    def point_key(i: int, j: int) -> str:
        return identity_key("plane-point", hashes, {**settings, "point": [i, j]})

    store = ResultStore(out, valid=lambda r: isinstance(r.get("loss"), (int, float, type(None))))
    done: dict[tuple[int, int], dict[str, Any]] = {}
    for j in range(resolution):
        for i in range(resolution):
            row = store.load(point_key(i, j))
            if row is not None:
                done[(i, j)] = row
    units = resolution * resolution
    log = ShardLog(out, part, "plane", units)
    log.found(sum(part.owns(j * resolution + i) for i, j in done))

    def save(key: tuple[int, int], row: dict[str, Any]) -> None:
        store.put(point_key(*key), row)
        log.unit()

    shown = sum(part.owns(n) or (n % resolution, n // resolution) in done for n in range(units))
    try:
        with log, events.progress(shown, "plane") as tick:
            pl.evaluate_plane(
                evaluator,
                the_plane,
                resolution,
                bounds,
                progress=lambda k, n: tick(),
                done=done,
                on_point=save,
                shard=part,
            )
    except KeyboardInterrupt as exc:
        resume_hint(exc, f"the finished points are saved in {out}")
        raise
    with store.lock():  # the shard that finds every point stored writes the results
        for j in range(resolution):
            for i in range(resolution):
                row = None if (i, j) in done else store.load(point_key(i, j))
                if row is not None:
                    done[(i, j)] = row
        if len(done) < units:
            events.say(
                f"plane: shard {part.label} is done; {len(done)} of the {units} points are in "
                f"{out}, and the shard that stores the last one writes the results"
            )
            return PlaneOutcome(False, len(done), units, resolution=resolution)
        rows = [done[(i, j)] for j in range(resolution) for i in range(resolution)]
        anchors = pl.anchor_losses(evaluator, the_plane)
        store.write_parquet("plane.parquet", rows, PLANE_SCHEMA)
        record = {
            "points": {"A": _name(study.a), "B": _name(study.b), "C": _name(study.c)},
            "coords": the_plane.coords,
            "anchor_loss": anchors,
            "bounds": list(bounds),
            "resolution": resolution,
            "bn": spec.bn.describe(),
            "data": session.data_record(),
            "arch": adapter.name,
            "key": identity_key("plane", hashes, settings),
            "alignment": alignments or None,
        }
        atomic_write_json(out / "plane.json", record)
    return PlaneOutcome(
        True,
        units,
        units,
        rows,
        dict(the_plane.coords),
        anchors,
        resolution,
        tuple(bounds),
        record,
    )
