"""``mliscan report RUNS...``: the paper's tables from a folder of runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
from mliscan.shard import ShardSpec


@spine.command(
    "report",
    S.SourceSpec,
    S.EvalSpec,
    S.ReportSpec,
    spine.OutputSpec,
    ShardSpec,
    exclude=("json", "plot"),
)
def report(
    runs: Annotated[
        list[Path],
        typer.Argument(help="Folders of runs from `mliscan train` (searched recursively)."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder: runs.parquet, table1/table2 .md and .csv.", metavar="DIR"
        ),
    ] = Path("report-out"),
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write one self-contained HTML page (tables + figures).",
            metavar="PATH",
            rich_help_panel=S.OUT,
        ),
    ] = None,
    no_figures: Annotated[
        bool,
        typer.Option(
            "--no-figures",
            help="Tables only (no matplotlib figures).",
            metavar="",
            rich_help_panel=S.OUT,
        ),
    ] = False,
    *,
    specs: spine.Specs,
) -> int:
    """Table 1 / Table 2 forms and the Gauss-length power law over trained runs.

    Examples:

      mliscan report runs/ --out report

      mliscan report runs/ --group-by optimizer,bn,lr --tol 1e-3 --loss-threshold 0.1

      mliscan report runs/ --out report --html report/sweep.html

      mliscan report runs/ --out report --launcher slurm --shards 16 --slurm-time 30

    Writes OUT/runs.parquet, table1/table2/powerlaw .md and .csv, and the figures
    curves (Figures 2/4), delta_scatter (Figure 5) and power_law (Figure 7) as PNG and SVG.
    """
    cluster = specs[ShardSpec]
    if cluster.launcher != "none":
        from mliscan.cli import launch

        return launch.submit(cluster, "report", out, specs.context)
    from mliscan.cli import ui
    from mliscan.cli.events import TerminalEvents
    from mliscan.runners.report import ReportStudy, run_report

    spec, group_by = specs[S.EvalSpec], specs[S.ReportSpec].group_by
    study = ReportStudy(
        tuple(runs),
        out,
        source=specs[S.SourceSpec],
        eval=spec,
        report=specs[S.ReportSpec],
        shard=cluster.resolve(),
    )
    outcome = run_report(study, TerminalEvents(specs[spine.OutputSpec].quiet))
    if not outcome.complete:
        return 0
    rows, threshold, tolerance, fit = (
        outcome.rows,
        outcome.threshold,
        outcome.tolerance,
        outcome.fit,
    )
    for table in outcome.tables:
        if table.name != "powerlaw":
            ui.out.print(table.markdown(), markup=False)  # values from run.json
    if outcome.unconverged:
        ui.err.print(f"[yellow]note:[/] {ui.escape(outcome.unconverged)}")
    if fit is not None:
        ui.out.print(
            f"Gauss length ~ {fit['prefactor']:.3g} x (normalized distance)^{fit['slope']:.3f}, "
            f"R^2 = {fit['r2']:.3f} over {fit['points']} runs (Figure 7)"
        )
    figures = []
    if not no_figures:
        from mliscan import plots

        panels = [t.columns for t in outcome.tables if t.name == "grouped"] or [["optimizer", "bn"]]
        figures.append(
            plots.plot_curve_panels(rows, panels[0], tolerance, out / "curves", threshold)[0]
        )
        figures.append(
            plots.plot_delta_scatter(rows, tolerance, out / "delta_scatter", threshold)[0]
        )
        if fit is not None:
            figures.append(plots.plot_power_law(rows, fit, out / "power_law")[0])
    if html is not None:
        from mliscan.paths import atomic_write_text
        from mliscan.reporting import html_page

        page = html_page(
            f"mliscan report: {len(rows)} runs",
            [(t.heading, t.rows) for t in outcome.tables],
            figures,
            notes=[
                f"runs: {', '.join(str(r) for r in runs)}",
                f"{len(rows)} runs, {spec.alphas} alphas",
                *([outcome.unconverged] if outcome.unconverged else []),
            ],
            settings={
                "loss threshold (converged below)": threshold,
                "tolerance (non-monotonic above)": tolerance,
                "alphas": spec.alphas,
                "batch-norm statistics": spec.bn.mode,
                "Gauss length": spec.gauss,
                "group by": group_by or "-",
            },
            runs=rows,
            loss_threshold=threshold,
        )
        atomic_write_text(html, page)
    done: list[object] = [out / f for f in outcome.files]
    done += [f.with_suffix(ext) for f in figures for ext in (".png", ".svg")]
    if html is not None:
        done.append(html)
    ui.wrote(*done)
    return 0
