"""``mliscan plane A B C``: the loss on the plane through three points (Figures 1, 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
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
    defaults={"batch_size": 1024, "gauss": False},
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
    part = cluster.resolve()
    from mliscan import plane as pl
    from mliscan.checkpoints import check_pair, content_hash
    from mliscan.cli import ui
    from mliscan.evaluate import PathEvaluator
    from mliscan.identity import key as identity_key
    from mliscan.paths import atomic_write_json
    from mliscan.pipeline import open_endpoint, setup
    from mliscan.store import ResultStore

    source, grid_spec, out_spec = specs[S.SourceSpec], specs[S.PlaneSpec], specs[spine.OutputSpec]
    resolution, quiet, plot = grid_spec.resolution, out_spec.quiet, out_spec.plot
    ckpts = [open_endpoint(str(p), source) for p in (a, b, c)]
    check_pair(ckpts[0], ckpts[1])
    check_pair(ckpts[0], ckpts[2])
    spec = specs[S.EvalSpec]
    ctx = setup(ckpts[0], specs[S.ArchSpec], None, specs[S.DataSpec], spec, source)
    adapter = ctx.choice.adapter
    states = [ctx.state(ck) for ck in ckpts]
    align = specs[S.AlignSpec].align
    alignments = {}
    if align != "none":  # B and C are permuted to match A before the plane is made
        from mliscan.align import align as weight_match

        for i, name in ((1, "B"), (2, "C")):
            states[i], alignments[name] = weight_match(adapter, ctx.module, states[0], states[i])
    evaluator = PathEvaluator(adapter, ctx.module, states[0], states[1], ctx.prepared, spec)
    the_plane = pl.make_plane(*states, evaluator.roles.interpolated)
    bounds = pl.default_range(the_plane) if grid_spec.range is None else grid_spec.range
    hashes = [content_hash(s) for s in states]
    settings = {
        "bounds": list(bounds),
        "resolution": resolution,
        "eval": spec.numeric_settings(),
        "data": ctx.data_record(),
        "arch": adapter.name,
        "arch_options": adapter.options_to_dict(ctx.choice.options),
    }
    if align != "none":
        settings["align"] = align

    def point_key(i: int, j: int) -> str:
        return identity_key("plane-point", hashes, {**settings, "point": [i, j]})

    store = ResultStore(out, valid=lambda r: isinstance(r.get("loss"), (int, float, type(None))))
    done = {}
    for j in range(resolution):
        for i in range(resolution):
            row = store.load(point_key(i, j))
            if row is not None:
                done[(i, j)] = row

    from mliscan.shard import ShardLog

    units = resolution * resolution
    log = ShardLog(out, part, "plane", units)
    log.found(sum(part.owns(j * resolution + i) for i, j in done))

    def save(key: tuple[int, int], row: dict) -> None:
        store.put(point_key(*key), row)
        log.unit()

    shown = sum(part.owns(n) or (n % resolution, n // resolution) in done for n in range(units))
    try:
        with log, ui.count_progress(shown, "plane", quiet) as tick:
            rows = pl.evaluate_plane(
                evaluator,
                the_plane,
                resolution,
                bounds,
                progress=lambda k, n: tick(),
                done=done,
                on_point=save,
                shard=part,
            )
    except KeyboardInterrupt:
        from mliscan.cli.errors import InterruptState, real_interrupt

        if not real_interrupt():
            raise  # the user's code raised it: reported as its error, not as a Ctrl-C
        InterruptState.reported = True
        ui.err.print(
            f"mliscan: interrupted: finished points are saved in {ui.escape(str(out))}; rerun "
            "the same command to resume"
        )
        return 130
    with store.lock():  # the shard that finds every point stored writes the results
        for j in range(resolution):
            for i in range(resolution):
                row = None if (i, j) in done else store.load(point_key(i, j))
                if row is not None:
                    done[(i, j)] = row
        if len(done) < units:
            ui.err.print(
                f"plane: shard {part.label} is done; {len(done)} of the {units} points are in "
                f"{ui.escape(str(out))}, and the shard that stores the last one writes the results"
            )
            return 0
        rows = [done[(i, j)] for j in range(resolution) for i in range(resolution)]
        anchors = pl.anchor_losses(evaluator, the_plane)
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
                "key": identity_key("plane", hashes, settings),
                "alignment": alignments or None,
            },
        )
    if plot is not None:
        from mliscan.plots import plot_plane

        plot_plane(rows, the_plane.coords, resolution, Path(plot))
    undefined = sum(r["loss"] is None for r in rows)
    if undefined:
        ui.err.print(
            f"[yellow]warning:[/] the loss is NaN/Inf at {undefined} of {len(rows)} points (the "
            "range reaches weights where the model overflows); they are null in plane.json and "
            "plane.parquet: narrow --range"
        )
    ui.out.print(
        "plane: "
        + ", ".join(
            f"{k} at ({x:.3g}, {y:.3g}) loss {ui.fmt(anchors[k])}"
            for k, (x, y) in the_plane.coords.items()
        )
    )
    ui.wrote(out / "plane.parquet", out / "plane.json", *([plot] if plot else []))
    return 0
