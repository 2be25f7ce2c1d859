"""The grid study (Figure 8): every init-init, init-optimum and optimum-optimum path,
stored and resumable, shared by shards and torchrun ranks. ``mliscan grid`` and
``mliscan.grid`` both run :func:`run_grid`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mliscan import families as g
from mliscan.adapter import Adapter
from mliscan.checkpoints import Checkpoint
from mliscan.data import Dataset
from mliscan.errors import UsageError
from mliscan.paths import INIT_FILE, env_value, find_runs
from mliscan.pipeline import open_endpoint, setup
from mliscan.record import PathRecord, as_record
from mliscan.runners import GRID_DEFAULTS
from mliscan.runners.events import SILENT, Events, resume_hint
from mliscan.schemas import CURVE_SCHEMA, PATH_SCHEMA
from mliscan.shard import WHOLE, Shard, ShardLog
from mliscan.spec import AlignSpec, ArchSpec, DataSpec, EvalSpec, SourceSpec, VerdictSpec

DEFAULTS = GRID_DEFAULTS  # the command line and the Python API both take them from here

EndpointText = str | Path | Checkpoint


@dataclass(frozen=True)
class GridStudy:
    """What a grid is: its endpoints and the specs every path is evaluated under.

    ``inits``/``optima``: explicit endpoints (files, sources, or checkpoints loaded in
    Python), then the run folders' pairs; ``n_inits``/``n_optima``: how many of each (fresh
    initialisations are sampled past the given ones; None: those found)."""

    out: Path
    runs: tuple[Path, ...] = ()
    inits: tuple[EndpointText, ...] = ()
    optima: tuple[EndpointText, ...] = ()
    n_inits: int | None = None
    n_optima: int | None = None
    source: SourceSpec = field(default_factory=SourceSpec)
    arch: ArchSpec | Adapter | str | None = None
    arch_options: dict[str, Any] | None = None
    data: DataSpec | Dataset = field(default_factory=DataSpec)
    eval: EvalSpec = field(default_factory=lambda: EvalSpec(**DEFAULTS))
    verdict: VerdictSpec = field(default_factory=VerdictSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    shard: Shard = WHOLE


@dataclass
class GridOutcome:
    """What a grid run leaves: the tables when every path is stored (``complete``)."""

    inits: list[str]
    optima: list[str]
    paths_total: int
    stored: int
    computed: int
    complete: bool
    records: list[PathRecord]
    """Each stored path, judged at the study's tolerance."""
    paths: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    rank: int = 0
    world: int = 1

    def summary(self) -> list[dict[str, Any]]:
        """Per family: paths, monotonic share, mean barrier, mean min-Δ."""
        return g.summarise(self.paths)

    @property
    def files(self) -> list[str]:
        return ["paths.parquet", "curves.parquet"] if self.complete else []


def distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun (the process group started here); (0, 1) otherwise."""
    world = env_value("WORLD_SIZE", 1)
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _first(study: GridStudy, run_dirs: Sequence[Path]) -> EndpointText:
    for given in (study.inits, study.optima):
        if given:
            return given[0]
    if run_dirs:
        return str(run_dirs[0] / INIT_FILE)
    raise UsageError("no endpoints found: the folders hold no runs (run.json, init and final)")


def run_grid(
    study: GridStudy, events: Events = SILENT, *, under_torchrun: bool = False
) -> GridOutcome:
    """Evaluate the grid's missing paths (this shard's, this rank's), store each as it is
    done, and when every path is stored write ``paths.parquet`` and ``curves.parquet``.

    ``under_torchrun``: the process belongs to the command (``mliscan grid`` under
    torchrun): the process group is started and each rank takes its CUDA device. A
    KeyboardInterrupt leaves the finished paths stored and is re-raised with a
    ``resume_hint``."""
    run_dirs = find_runs(study.runs)
    n_inits = study.n_inits if study.n_inits is not None else len(study.inits) + len(run_dirs)
    n_optima = study.n_optima if study.n_optima is not None else len(study.optima) + len(run_dirs)
    if n_inits + n_optima < 2:
        raise UsageError(
            "a grid needs at least two endpoints: pass RUNS folders or --init/--optimum files"
        )
    spec, part = study.eval, study.shard
    rank, world = distributed() if under_torchrun else (0, 1)
    # a shard of N with torchrun's W ranks: rank r of shard K is rank K*W + r of N*W
    share = part.within(rank, world)
    if world > 1:
        import torch

        from mliscan.evaluate import rank_device

        local = env_value("LOCAL_RANK", 0)
        device = rank_device(spec.device, local, torch.cuda.is_available())
        if device != spec.device:
            spec = spec.replace(device=device)
            torch.cuda.set_device(local)  # the command owns its process: NCCL's device
    first = _first(study, run_dirs)
    first_ckpt = first if isinstance(first, Checkpoint) else open_endpoint(str(first), study.source)
    session = setup(first_ckpt, study.arch, study.arch_options, study.data, spec, study.source)
    adapter, options = session.choice.adapter, session.choice.options
    ends_i, ends_o = g.gather_endpoints(
        run_dirs, n_inits, n_optima, list(study.inits), list(study.optima), session
    )
    everything = ends_i + ends_o
    for e in everything[1:]:
        g.check_compatible(everything[0], e)
    align = study.align.align
    settings = g.settings_of(
        spec, session.data_record(), adapter.name, adapter.options_to_dict(options)
    )
    if align != "none":  # a new setting: older stores keep their keys
        settings["align"] = align
    tasks = g.plan(ends_i, ends_o, settings)
    store = g.open_store(study.out)
    engine = g.Context(adapter, session.module, session.prepared, spec, align)
    done_before = sum(store.has(t.pid) for t in tasks)
    if rank == 0:
        events.say(
            f"grid: {len(ends_i)} inits x {len(ends_o)} optima -> {len(tasks)} paths "
            f"({done_before} already in {study.out})"
            f"{'' if world == 1 else f', {world} ranks'}"
            f"{'' if part.whole else f'; shard {part.label} takes {part.size(len(tasks))}'}"
        )
    # rank 0 of each shard keeps its record (of rank 0's own paths, under torchrun)
    log = ShardLog(study.out, part if rank == 0 else WHOLE, "grid", len(tasks), Shard(*share))
    quiet = rank != 0
    computed = 0
    try:
        with log, events.progress(0 if quiet else part.size(len(tasks)), "paths") as tick:

            def done(t: g.PathTask, new: bool) -> None:
                if not quiet:
                    tick(f"{t.a.label} → {t.b.label}")
                log.unit(new)

            computed = g.run_tasks(engine, tasks, store, *share, on_done=done)
    except KeyboardInterrupt as exc:
        saved = sum(store.has(t.pid) for t in tasks)
        resume_hint(exc, f"{saved} of {len(tasks)} paths are saved in {study.out}")
        raise
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    labels_i, labels_o = [e.label for e in ends_i], [e.label for e in ends_o]
    if rank != 0:
        _leave(world)
        return GridOutcome(
            labels_i, labels_o, len(tasks), 0, computed, False, [], [], [], rank, world
        )
    with store.lock():  # the shard that finds every path stored writes the tables
        tol = study.verdict.tol
        order = {f: i for i, f in enumerate(g.FAMILIES)}  # the tables' order
        records = sorted(
            (as_record(r, tol) for r in store.records(t.pid for t in tasks)),
            key=lambda r: (order[str(r.family)], str(r.a), str(r.b)),
        )
        complete = len(records) == len(tasks)
        paths: list[dict[str, Any]] = []
        curves: list[dict[str, Any]] = []
        if complete:
            paths, curves = g.tables(records, tol)
            store.write_parquet("paths.parquet", paths, PATH_SCHEMA)
            store.write_parquet("curves.parquet", curves, CURVE_SCHEMA)
    if not complete:
        events.say(
            f"grid: shard {part.label} is done; {len(records)} of the {len(tasks)} paths are in "
            f"{study.out}, and the shard that stores the last one writes the tables"
        )
    _leave(world)
    outcome = GridOutcome(
        labels_i, labels_o, len(tasks), len(records), computed, complete, records, paths, curves
    )
    outcome.rank, outcome.world = rank, world
    return outcome


def _leave(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
