"""``mliscan trajectory SOURCE``: MLI from the initialisation to every saved checkpoint and
from every checkpoint to the final weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
from mliscan.runners import TRAJECTORY_DEFAULTS
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
    defaults=TRAJECTORY_DEFAULTS,  # the runner's
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
    import json

    from mliscan.cli import ui
    from mliscan.cli.events import TerminalEvents, interrupted
    from mliscan.paths import atomic_write_json
    from mliscan.runners.trajectory import TrajectoryStudy, run_trajectory

    out_spec, tol = specs[spine.OutputSpec], specs[S.VerdictSpec].tol
    study = TrajectoryStudy(
        source,
        out,
        revisions,
        source=specs[S.SourceSpec],
        arch=specs[S.ArchSpec],
        data=specs[S.DataSpec],
        eval=specs[S.EvalSpec],
        verdict=specs[S.VerdictSpec],
        shard=cluster.resolve(),
    )
    try:
        outcome = run_trajectory(study, TerminalEvents(out_spec.quiet))
    except KeyboardInterrupt as exc:
        return interrupted(exc, "paths")
    if not outcome.complete:
        return 0
    console = ui.err if out_spec.json_out == "-" else ui.out  # stdout holds the JSON
    console.print(ui.trajectory_table(outcome.rows, tol))
    written: list[object] = [out / f for f in outcome.files]
    plot = Path(out_spec.plot) if out_spec.plot else out / "trajectory.png"
    from mliscan.plots import plot_trajectory

    plot_trajectory(outcome.rows, plot)
    written.append(plot)
    if out_spec.json_out is not None:
        doc = outcome.to_dict(source)
        if out_spec.json_out == "-":
            print(json.dumps(doc, indent=2))
        else:
            atomic_write_json(Path(out_spec.json_out), doc)
            written.append(out_spec.json_out)
    ui.err.print(
        f"trajectory: {outcome.computed} paths computed, {outcome.reused} found in "
        f"{ui.escape(str(out))}"
    )
    ui.wrote(*written)
    return 0
