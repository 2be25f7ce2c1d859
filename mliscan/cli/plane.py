"""``mliscan plane A B C``: the loss on the plane through three points (Figures 1, 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan.cli import options as o


def plane(
    a: Annotated[str, typer.Argument(metavar="A", help="First point (the origin), e.g. an init.")],
    b: Annotated[str, typer.Argument(metavar="B", help="Second point, e.g. the optimum.")],
    c: Annotated[str, typer.Argument(metavar="C", help="Third point, e.g. an unrelated init.")],
    resolution: Annotated[int, typer.Option(help="Grid points per axis.")] = 21,
    range_: Annotated[
        str | None,
        typer.Option(
            "--range",
            help="XMIN,XMAX,YMIN,YMAX in plane coordinates (default: the points plus 20%).",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Result folder: plane.parquet, plane.json, points/.")
    ] = Path("plane-out"),
    arch: o.Arch = None,
    hidden: o.Hidden = None,
    activation: o.Activation = None,
    bn: o.BN = None,
    init_scheme: o.InitScheme = None,
    arch_opt: o.ArchOpt = None,
    data: o.Data = None,
    data_dir: o.DataDir = None,
    data_limit: o.DataLimit = None,
    bn_batch_size: o.BnBatchSize = o.DEFAULTS["bn_batch_size"],
    bn_mode: o.BnMode = "exact",
    device: o.Device = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation batch size.")] = 1024,
    plot: o.PlotOut = None,
    quiet: o.Quiet = False,
) -> int:
    """Evaluate the loss on a grid over the plane through A, B and C, resumably.

    Examples:

      mliscan plane run0/init.safetensors run0/final.safetensors run1/init.safetensors --plot plane.png

      mliscan plane i.safetensors f.safetensors g.safetensors --resolution 41 --range -5,60,-10,40
    """
    import json

    from mliscan import plane as pl
    from mliscan.checkpoints import check_pair, content_hash
    from mliscan.cli import ui
    from mliscan.errors import UsageError
    from mliscan.evaluate import PathEvaluator
    from mliscan.paths import atomic_write_json
    from mliscan.pipeline import open_source, setup
    from mliscan.spec import EvalSpec
    from mliscan.store import ResultStore, path_id

    if resolution < 2:
        raise UsageError("--resolution must be at least 2")
    ckpts = [open_source(str(p)) for p in (a, b, c)]  # paths or hf:/timm:/init: sources
    check_pair(ckpts[0], ckpts[1])
    check_pair(ckpts[0], ckpts[2])
    spec = EvalSpec(
        bn=o.bn_spec(bn_mode, bn_batch_size, None),
        gauss=False,
        batch_size=batch_size,
        device=device,
    )
    given = {"name": data, "data_dir": str(data_dir) if data_dir else None, "limit": data_limit}
    ctx = setup(
        ckpts[0], arch, o.arch_options(hidden, activation, bn, init_scheme, arch_opt), given, spec
    )
    adapter = ctx.choice.adapter
    states = [adapter.map_keys(ck.tensors) for ck in ckpts]
    evaluator = PathEvaluator(adapter, ctx.module, states[0], states[1], ctx.prepared, spec)
    the_plane = pl.make_plane(*states, evaluator.roles.interpolated)
    if range_ is None:
        bounds = pl.default_range(the_plane)
    else:
        try:
            bounds = tuple(float(v) for v in range_.split(","))
            assert len(bounds) == 4 and bounds[0] < bounds[1] and bounds[2] < bounds[3]
        except (ValueError, AssertionError):
            raise UsageError(
                f"--range expects XMIN,XMAX,YMIN,YMAX with min < max, got {range_!r}"
            ) from None
    settings = {
        "points": [content_hash(s) for s in states],
        "bounds": list(bounds),
        "resolution": resolution,
        "bn": spec.bn.describe(),
        "data": ctx.data_record(),
        "batch_size": batch_size,
    }
    store = ResultStore(out)
    plane_key = json.dumps(settings, sort_keys=True)
    done = {}
    for j in range(resolution):
        for i in range(resolution):
            pid = path_id(plane_key, f"{i},{j}", {})
            if store.has(pid):
                done[(i, j)] = store.get(pid)

    def save(key: tuple[int, int], row: dict) -> None:
        store.put(path_id(plane_key, f"{key[0]},{key[1]}", {}), row)

    try:
        with ui.count_progress(resolution * resolution, "plane", quiet) as tick:
            rows = pl.evaluate_plane(
                evaluator,
                the_plane,
                resolution,
                bounds,  # type: ignore[arg-type]
                progress=lambda k, n: tick(),
                done=done,
                on_point=save,
            )
    except KeyboardInterrupt:
        from mliscan.cli.errors import InterruptState

        InterruptState.reported = True
        ui.err.print(
            f"mliscan: interrupted: finished points are saved in {out}; rerun the same command to resume"
        )
        return 130
    anchors = pl.anchor_losses(evaluator, the_plane)
    with store.lock():
        store.write_parquet("plane.parquet", rows, pl.PLANE_SCHEMA)
        atomic_write_json(
            out / "plane.json",
            {
                "points": {"A": a, "B": b, "C": c},
                "coords": the_plane.coords,
                "anchor_loss": anchors,
                "bounds": list(bounds),
                "resolution": resolution,
                "bn": spec.bn.describe(),
                "data": ctx.data_record(),
                "arch": adapter.name,
            },
        )
    if plot is not None:
        from mliscan.plots import plot_plane

        plot_plane(rows, the_plane.coords, resolution, plot)
    ui.out.print(
        "plane: "
        + ", ".join(
            f"{k} at ({x:.3g}, {y:.3g}) loss {ui.fmt(anchors[k])}"
            for k, (x, y) in the_plane.coords.items()
        )
    )
    ui.err.print(f"results: {out / 'plane.parquet'}, {out / 'plane.json'}")
    return 0
