"""``mliscan grid``: init-init, init-optimum and optimum-optimum paths (Figure 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
from mliscan.runners import GRID_DEFAULTS, MAX_ENDPOINTS
from mliscan.shard import ShardSpec


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
    defaults=GRID_DEFAULTS,  # the runner's: a fixed batch size, so resumes agree bit for bit
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
    from mliscan.cli import ui
    from mliscan.cli.events import TerminalEvents, interrupted
    from mliscan.runners.grid import GridStudy, run_grid

    out_spec, tol = specs[spine.OutputSpec], specs[S.VerdictSpec].tol
    study = GridStudy(
        out=out,
        runs=tuple(runs or ()),
        inits=tuple(init or ()),
        optima=tuple(optimum or ()),
        n_inits=inits,
        n_optima=optima,
        source=specs[S.SourceSpec],
        arch=specs[S.ArchSpec],
        data=specs[S.DataSpec],
        eval=specs[S.EvalSpec],
        verdict=specs[S.VerdictSpec],
        align=specs[S.AlignSpec],
        shard=cluster.resolve(),
    )
    try:
        outcome = run_grid(study, TerminalEvents(out_spec.quiet), under_torchrun=True)
    except KeyboardInterrupt as exc:
        return interrupted(exc, "paths")
    if not outcome.complete:
        return 0
    for family in dict.fromkeys(str(r.family) for r in outcome.records):
        ui.out.print(ui.heatmap([r for r in outcome.records if r.family == family], family, tol))
    for s in outcome.summary():
        ui.out.print(
            f"{s['family']}: {s['paths']} paths, {100 * s['monotonic_share']:.1f}% monotonic, "
            f"mean barrier {ui.fmt(s['mean_barrier'])}, mean min-Δ {ui.fmt(s['mean_min_delta'])}"
        )
    if out_spec.plot is not None:
        from mliscan.plots import plot_grid

        plot_grid(outcome.records, Path(out_spec.plot))
    ui.wrote(*(out / f for f in outcome.files), *([out_spec.plot] if out_spec.plot else []))
    return 0
