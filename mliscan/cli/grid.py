"""``mliscan grid``: init-init, init-optimum and optimum-optimum paths (Figure 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
from mliscan.paths import env_value
from mliscan.shard import ShardSpec

# More endpoints than this is a typing error (the paths grow as the square).
MAX_ENDPOINTS = 1000


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise."""
    world = env_value("WORLD_SIZE", 1)
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


@spine.command(
    "grid",
    S.SourceSpec,
    S.ArchSpec,
    S.DataSpec,
    S.EvalSpec,
    S.VerdictSpec,
    S.AlignSpec,
    spine.OutputSpec,
    ShardSpec,
    # a fixed batch size, so resumed and sharded runs agree bit for bit
    defaults={"batch_size": 1024, "gauss": False},
    exclude=("json", "alpha_chunk"),
)
def grid(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="Folders of runs from `mliscan train` (searched recursively)."),
    ] = None,
    inits: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=MAX_ENDPOINTS,
            help="Number of initialisations (fresh ones are sampled past the runs').",
            show_default="the runs' and --init's",
        ),
    ] = None,
    optima: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=MAX_ENDPOINTS,
            help="Number of optima (the runs' final weights).",
            show_default="the runs' and --optimum's",
        ),
    ] = None,
    init: Annotated[
        list[str] | None,
        typer.Option("--init", help="An explicit initialisation: a file or source (repeatable)."),
    ] = None,
    optimum: Annotated[
        list[str] | None,
        typer.Option("--optimum", help="An explicit optimum: a file or source (repeatable)."),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Result store: paths/*.json, paths.parquet, curves.parquet.", metavar="DIR"
        ),
    ] = Path("grid-out"),
    *,
    specs: spine.Specs,
) -> int:
    """Interpolate between all pairs of initialisations and optima, resumably.

    Examples:

      mliscan grid runs/ --inits 10 --optima 10 --out grid-out --plot fig8.png

      mliscan grid --init a/init.safetensors --init b/init.safetensors --optimum a/final.safetensors --out g

      torchrun --nproc-per-node 4 -m mliscan.cli.app grid runs/ --inits 10 --optima 10 --out g

      mliscan grid runs/ --inits 10 --optima 10 --out g --launcher slurm --shards 8 --slurm-gpus-per-task 1
    """
    from mliscan.paths import check_local_source

    for path in [*(init or []), *(optimum or [])]:
        check_local_source(path)  # before torch is imported: a typo fails at once
    cluster = specs[ShardSpec]
    if cluster.launcher != "none":
        from mliscan.cli import launch

        return launch.submit(cluster, "grid", out, specs.context)
    part = cluster.resolve()
    from mliscan import families as g
    from mliscan import results
    from mliscan.cli import ui
    from mliscan.errors import UsageError
    from mliscan.paths import find_runs
    from mliscan.pipeline import open_endpoint, setup
    from mliscan.shard import WHOLE, Shard, ShardLog

    source, out_spec = specs[S.SourceSpec], specs[spine.OutputSpec]
    quiet, plot, tol = out_spec.quiet, out_spec.plot, specs[S.VerdictSpec].tol
    run_dirs = find_runs(runs or [])
    explicit_inits, explicit_optima = list(init or []), list(optimum or [])
    n_inits = inits if inits is not None else len(explicit_inits) + len(run_dirs)
    n_optima = optima if optima is not None else len(explicit_optima) + len(run_dirs)
    if n_inits + n_optima < 2:
        raise UsageError(
            "a grid needs at least two endpoints: pass RUNS folders or --init/--optimum files"
        )
    first = (
        explicit_inits[0]
        if explicit_inits
        else (
            explicit_optima[0]
            if explicit_optima
            else (str(run_dirs[0] / "init.safetensors") if run_dirs else None)
        )
    )
    if first is None:
        raise UsageError("no endpoints found: the folders hold no runs (run.json, init and final)")
    spec = specs[S.EvalSpec]
    rank, world = _distributed()
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
    first_end = open_endpoint(str(first), source)
    ctx = setup(first_end, specs[S.ArchSpec], None, specs[S.DataSpec], spec, source)
    adapter, options = ctx.choice.adapter, ctx.choice.options
    ends_i, ends_o = g.gather_endpoints(
        run_dirs, n_inits, n_optima, explicit_inits, explicit_optima, ctx
    )
    everything = ends_i + ends_o
    for e in everything[1:]:
        g.check_compatible(everything[0], e)
    align = specs[S.AlignSpec].align
    settings = g.settings_of(
        spec, ctx.data_record(), adapter.name, adapter.options_to_dict(options)
    )
    if align != "none":  # a new setting: older stores keep their keys
        settings["align"] = align
    tasks = g.plan(ends_i, ends_o, settings)
    store = g.open_store(out)
    engine = g.Context(adapter, ctx.module, ctx.prepared, spec, align)
    done_before = sum(store.has(t.pid) for t in tasks)
    if rank == 0:
        ui.err.print(
            f"grid: {len(ends_i)} inits x {len(ends_o)} optima -> {len(tasks)} paths "
            f"({done_before} already in {ui.escape(str(out))})"
            f"{'' if world == 1 else f', {world} ranks'}"
            f"{'' if part.whole else f'; shard {part.label} takes {part.size(len(tasks))}'}"
        )
    # rank 0 of each shard keeps its record (of rank 0's own paths, under torchrun)
    log = ShardLog(out, part if rank == 0 else WHOLE, "grid", len(tasks), Shard(*share))

    def done(t: g.PathTask, new: bool) -> None:
        tick(f"{t.a.label} → {t.b.label}")
        log.unit(new)

    try:
        with log, ui.count_progress(part.size(len(tasks)), "paths", quiet or rank != 0) as tick:
            g.run_tasks(engine, tasks, store, *share, on_done=done)
    except KeyboardInterrupt:
        from mliscan.cli.errors import InterruptState, real_interrupt

        if not real_interrupt():
            raise  # the user's code raised it: reported as its error, not as a Ctrl-C
        InterruptState.reported = True
        saved = sum(store.has(t.pid) for t in tasks)
        ui.err.print(
            f"mliscan: interrupted: {saved} of {len(tasks)} paths are saved in "
            f"{ui.escape(str(out))}; "
            "rerun the same command to resume"
        )
        return 130
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            dist.destroy_process_group()
            return 0
    with store.lock():  # the shard that finds every path stored writes the tables
        records = store.records(t.pid for t in tasks)
        if len(records) == len(tasks):
            paths, curves = g.tables(records, tol)
            store.write_parquet("paths.parquet", paths, results.PATH_SCHEMA)
            store.write_parquet("curves.parquet", curves, results.CURVE_SCHEMA)
    if len(records) < len(tasks):
        ui.err.print(
            f"grid: shard {part.label} is done; {len(records)} of the {len(tasks)} paths are in "
            f"{ui.escape(str(out))}, and the shard that stores the last one writes the tables"
        )
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
        return 0
    for family in g.FAMILIES:
        rows = [p for p in paths if p["family"] == family]
        if rows:
            ui.out.print(ui.heatmap(rows, family, tol))
    for s in g.summarise(paths):
        ui.out.print(
            f"{s['family']}: {s['paths']} paths, {100 * s['monotonic_share']:.1f}% monotonic, "
            f"mean barrier {ui.fmt(s['mean_barrier'])}, mean min-Δ {ui.fmt(s['mean_min_delta'])}"
        )
    if plot is not None:
        from mliscan.plots import plot_grid

        plot_grid(records, Path(plot))
    ui.wrote(out / "paths.parquet", out / "curves.parquet", *([plot] if plot else []))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0
