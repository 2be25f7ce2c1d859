"""``mliscan plane A B C``: the loss on the plane through three points (Figures 1, 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
from mliscan.runners import PLANE_DEFAULTS
from mliscan.shard import ShardSpec


@spine.command(
    "plane",
    S.SourceSpec,
    S.ArchSpec,
    S.DataSpec,
    S.EvalSpec,
    S.PlaneSpec,
    S.AlignSpec,
    spine.OutputSpec,
    ShardSpec,
    defaults=PLANE_DEFAULTS,  # the runner's
    exclude=("alphas", "gauss", "gauss_examples", "gauss_method", "alpha_chunk", "json"),
)
def plane(
    a: Annotated[str, typer.Argument(metavar="A", help="First point (the origin), e.g. an init.")],
    b: Annotated[str, typer.Argument(metavar="B", help="Second point, e.g. the optimum.")],
    c: Annotated[str, typer.Argument(metavar="C", help="Third point, e.g. an unrelated init.")],
    out: Annotated[
        Path,
        typer.Option(help="Result folder: plane.parquet, plane.json, paths/.", metavar="DIR"),
    ] = Path("plane-out"),
    *,
    specs: spine.Specs,
) -> int:
    """Evaluate the loss on a grid over the plane through A, B and C, resumably.

    Examples:

      mliscan plane run0/init.safetensors run0/final.safetensors run1/init.safetensors --plot plane.png

      mliscan plane i.safetensors f.safetensors g.safetensors --resolution 41 --range -5,60,-10,40

      mliscan plane i.safetensors f.safetensors g.safetensors --resolution 101 --launcher slurm --shards 16
    """
    from mliscan.paths import check_local_source

    for point in (a, b, c):
        check_local_source(point)  # before torch is imported: a typo fails at once
    cluster = specs[ShardSpec]
    if cluster.launcher != "none":
        from mliscan.cli import launch

        return launch.submit(cluster, "plane", out, specs.context)
    from mliscan.cli import ui
    from mliscan.cli.events import TerminalEvents, interrupted
    from mliscan.runners.plane import PlaneStudy, run_plane

    plot = specs[spine.OutputSpec].plot
    study = PlaneStudy(
        a,
        b,
        c,
        out,
        source=specs[S.SourceSpec],
        arch=specs[S.ArchSpec],
        data=specs[S.DataSpec],
        eval=specs[S.EvalSpec],
        plane=specs[S.PlaneSpec],
        align=specs[S.AlignSpec],
        shard=cluster.resolve(),
    )
    try:
        outcome = run_plane(study, TerminalEvents(specs[spine.OutputSpec].quiet))
    except KeyboardInterrupt as exc:
        return interrupted(exc, "points")
    if not outcome.complete:
        return 0
    if plot is not None:
        from mliscan.plots import plot_plane

        plot_plane(outcome.rows, outcome.coords, outcome.resolution, Path(plot))
    if outcome.undefined:
        ui.err.print(
            f"[yellow]warning:[/] the loss is NaN/Inf at {outcome.undefined} of "
            f"{len(outcome.rows)} points (the range reaches weights where the model overflows); "
            "they are null in plane.json and plane.parquet: narrow --range"
        )
    ui.out.print(
        "plane: "
        + ", ".join(
            f"{k} at ({x:.3g}, {y:.3g}) loss {ui.fmt(outcome.anchors[k])}"
            for k, (x, y) in outcome.coords.items()
        )
    )
    ui.wrote(*(out / f for f in outcome.files), *([plot] if plot else []))
    return 0
