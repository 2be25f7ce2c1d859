"""``mliscan trajectory SOURCE``: MLI from the initialisation to every saved checkpoint and
from every checkpoint to the final weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
from mliscan.shard import ShardSpec


@spine.command(
    "trajectory",
    S.SourceSpec,
    S.ArchSpec,
    S.DataSpec,
    S.EvalSpec,
    S.VerdictSpec,
    spine.OutputSpec,
    ShardSpec,
    # a fixed batch size, so resumed runs agree bit for bit (as grid)
    defaults={"batch_size": 1024},
    exclude=("alpha_chunk",),
)
def trajectory(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="A run folder of `mliscan train --save-every K`, a folder of checkpoints "
            "(step in each file name), a Trainer run folder, or hf:ORG/NAME with --revisions.",
        ),
    ],
    revisions: Annotated[
        str | None,
        typer.Option(
            help="Revisions of an hf: source, in order: names (step0,step1000,main) or "
            "patterns ('step*', expanded in step order; from the local cache when offline).",
            metavar="LIST",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Result store: paths/*.json, trajectory.parquet, curves.parquet, trajectory.png.",
            metavar="DIR",
        ),
    ] = Path("trajectory-out"),
    *,
    specs: spine.Specs,
) -> int:
    """Measure the paths θ₀ → θ_k and θ_k → θ_T for every saved checkpoint θ_k, resumably.

    Examples:

      mliscan train --out runs/a --optimizer adam --lr 0.01 --epochs 30 --save-every 5

      mliscan trajectory runs/a --out traj-a

      mliscan trajectory hf:EleutherAI/pythia-70m --revisions 'step*' --offline --data-file corpus.txt --no-gauss
    """
    from mliscan.paths import check_local_source

    if not source.startswith("hf:"):
        check_local_source(source)  # before torch is imported: a typo fails at once
    cluster = specs[ShardSpec]
    if cluster.launcher != "none":
        from mliscan.cli import launch

        return launch.submit(cluster, "trajectory", out, specs.context)
    part = cluster.resolve()
    import json

    from mliscan import families as g
    from mliscan import results
    from mliscan import trajectory as tr
    from mliscan.cli import ui
    from mliscan.paths import atomic_write_json
    from mliscan.pipeline import open_endpoint, setup

    src, out_spec = specs[S.SourceSpec], specs[spine.OutputSpec]
    tol, spec = specs[S.VerdictSpec].tol, specs[S.EvalSpec]
    steps = tr.find_steps(source, revisions, offline=src.offline)
    if steps.skipped:  # every entry of the folder is either a checkpoint or named here
        from mliscan.errors import short_list

        ui.err.print(
            ui.escape(
                f"trajectory: {len(steps.skipped)} entries of {source} are not checkpoints "
                f"and are skipped: {short_list(steps.skipped)}"
            )
        )
    first = open_endpoint(steps[0].source, src)
    ctx = setup(first, specs[S.ArchSpec], None, specs[S.DataSpec], spec, src)
    adapter, options = ctx.choice.adapter, ctx.choice.options
    settings = g.settings_of(
        spec, ctx.data_record(), adapter.name, adapter.options_to_dict(options)
    )
    store = g.open_store(out)
    engine = g.Context(adapter, ctx.module, ctx.prepared, spec)
    ui.err.print(
        ui.escape(
            f"trajectory: {len(steps)} checkpoints ({steps[0].label} … {steps[-1].label}) -> "
            f"{2 * len(steps) - 2} paths, stored in {out}"
        )
    )
    from mliscan.shard import ShardLog

    log = ShardLog(out, part, "trajectory", 2 * len(steps))

    def done(st: tr.Step, d: str, new: bool) -> None:
        tick(f"{st.label} {tr.FAMILY[d]}")
        log.unit(new)

    try:
        with log, ui.count_progress(part.size(2 * len(steps)), "paths", out_spec.quiet) as tick:
            result = tr.measure(
                steps, tr.endpoint_loader(ctx), engine, settings, store, tol, done, part
            )
    except KeyboardInterrupt:
        from mliscan.cli.errors import InterruptState, real_interrupt

        if not real_interrupt():
            raise  # the user's code raised it: reported as its error, not as a Ctrl-C
        InterruptState.reported = True
        ui.err.print(
            f"mliscan: interrupted: the finished paths are saved in {ui.escape(str(out))}; "
            "rerun the same "
            "command to resume"
        )
        return 130
    with store.lock():  # the shard that finds every path stored writes the tables
        if not result.complete(store):
            n = sum(pid is not None for pid in result.units.values())
            ui.err.print(
                f"trajectory: shard {part.label} is done; {n - len(result.missing)} of the {n} "
                f"paths are in {ui.escape(str(out))}, and the shard that stores the last one "
                "writes the tables"
            )
            return 0
        store.write_parquet("trajectory.parquet", result.rows, tr.TRAJECTORY_SCHEMA)
        store.write_parquet("curves.parquet", result.curves(), results.CURVE_SCHEMA)
    console = ui.err if out_spec.json_out == "-" else ui.out  # stdout holds the JSON
    console.print(ui.trajectory_table(result.rows, tol))
    written: list[object] = [out / "trajectory.parquet", out / "curves.parquet"]
    plot = Path(out_spec.plot) if out_spec.plot else out / "trajectory.png"
    from mliscan.plots import plot_trajectory

    plot_trajectory(result.rows, plot)
    written.append(plot)
    if out_spec.json_out is not None:
        doc = {"source": source, "settings": settings, "steps": result.rows}
        if out_spec.json_out == "-":
            print(json.dumps(doc, indent=2))
        else:
            atomic_write_json(Path(out_spec.json_out), doc)
            written.append(out_spec.json_out)
    reused = len(result.records) - result.computed
    ui.err.print(
        f"trajectory: {result.computed} paths computed, {reused} found in {ui.escape(str(out))}"
    )
    ui.wrote(*written)
    return 0
