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
    import math

    from mliscan import report as rp
    from mliscan.cli import ui
    from mliscan.errors import UsageError
    from mliscan.metrics import is_monotonic
    from mliscan.paths import atomic_write_text, find_runs
    from mliscan.store import ResultStore

    spec, rs = specs[S.EvalSpec], specs[S.ReportSpec]
    quiet, no_gauss = specs[spine.OutputSpec].quiet, not spec.gauss
    loss_threshold, tol, group_by = rs.loss_threshold, rs.tol, rs.group_by
    source = specs[S.SourceSpec]

    folders = find_runs(runs)
    if not folders:
        raise UsageError("no runs found: the folders hold no run.json with init and final weights")
    from mliscan.shard import ShardLog

    part = cluster.resolve()
    mine = [f for i, f in enumerate(folders) if part.owns(i)]
    log = ShardLog(out, part, "report", len(folders))

    def done(folder: Path) -> None:
        tick(folder.name)
        log.unit()

    with log, ui.count_progress(len(mine), "runs", quiet) as tick:
        rows = rp.collect(mine, spec, on_run=done, source=source)
    if not part.whole:  # the shard that finds every run's metrics cached writes the tables
        left = sum(not rp.has_metrics(f, spec) for f in folders)
        if left:
            ui.err.print(
                f"report: shard {part.label} is done; {len(folders) - left} of the "
                f"{len(folders)} runs have their metrics, and the shard that computes the last "
                "one writes the tables"
            )
            return 0
        rows = rp.collect(folders, spec, source=source)  # from the caches
    threshold = rp.default_threshold(rows) if loss_threshold is None else loss_threshold
    tolerance = rp.default_tolerance(rows) if tol is None else tol
    for r in rows:
        r["monotonic"] = is_monotonic(
            math.nan if r["min_delta"] is None else r["min_delta"], tolerance
        )
    store = ResultStore(out)
    schema = {
        k: (
            "bool"
            if k in ("bn", "monotonic")
            else "f64"
            if isinstance(v, float)
            or k
            in (
                "lr",
                "momentum",
                "weight_decay",
                "final_train_loss",
                "final_train_accuracy",
                "min_delta",
                "distance",
                "normalized_distance",
                "gauss_length",
                "barrier",
            )
            else "i64"
            if k in ("epochs", "batch_size", "seed")
            else "str"
        )
        for k, v in rows[0].items()
        if k in rp.table_columns(rows[0])
    }
    store.write_parquet("runs.parquet", [{k: r[k] for k in schema} for r in rows], schema)
    tables = {
        "table1": (
            ["optimizer", "bn", "lr"],
            "Table 1 form: non-monotonic proportion (converged runs)",
        ),
        "table2": (
            ["scheme", "optimizer"],
            "Table 2 form: non-monotonic proportion and mean min-Δ",
        ),
    }
    if group_by:
        tables["grouped"] = (
            [c.strip() for c in group_by.split(",") if c.strip()],
            f"Grouped by {group_by}",
        )
        unknown = [c for c in tables["grouped"][0] if c not in rows[0]]
        if unknown:
            raise UsageError(
                f"--group-by: unknown column(s) {', '.join(unknown)}; columns: {', '.join(rows[0])}"
            )
    written_tables: list[tuple[str, list]] = []
    for name, (cols, title) in tables.items():
        table = rp.proportion_table(rows, cols, threshold, tolerance)
        heading = f"{title} (loss < {threshold:g}, min-Δ > {tolerance:g})"
        _write_table(out, name, table, cols, rp.markdown(table, heading))
        written_tables.append((heading, table))
        ui.out.print(rp.markdown(table, heading), markup=False)  # values from run.json
    unconverged = rp.convergence_note(rows, threshold)
    if unconverged:
        ui.err.print(f"[yellow]note:[/] {ui.escape(unconverged)}")
    fit = None
    if not no_gauss:
        fit = rp.power_law_fit(
            [r["normalized_distance"] for r in rows], [r["gauss_length"] for r in rows]
        )
        fit_table = [{"fit": "Gauss length = prefactor x distance^slope", **fit}]
        heading = "Figure 7: power-law fit of Gauss length against normalized distance"
        _write_table(
            out, "powerlaw", fit_table, list(fit_table[0]), rp.markdown(fit_table, heading)
        )
        written_tables.append((heading, fit_table))
        ui.out.print(
            f"Gauss length ~ {fit['prefactor']:.3g} x (normalized distance)^{fit['slope']:.3f}, "
            f"R^2 = {fit['r2']:.3f} over {fit['points']} runs (Figure 7)"
        )
    figures = []
    if not no_figures:
        from mliscan import plots

        panels = tables["grouped"][0] if group_by else ["optimizer", "bn"]
        figures.append(
            plots.plot_curve_panels(rows, panels, tolerance, out / "curves", threshold)[0]
        )
        figures.append(
            plots.plot_delta_scatter(rows, tolerance, out / "delta_scatter", threshold)[0]
        )
        if fit is not None:
            figures.append(plots.plot_power_law(rows, fit, out / "power_law")[0])
    if html is not None:
        page = rp.html_page(
            f"mliscan report: {len(rows)} runs",
            written_tables,
            figures,
            notes=[
                f"runs: {', '.join(str(r) for r in runs)}",
                f"{len(rows)} runs, {spec.alphas} alphas",
                *([unconverged] if unconverged else []),
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
    done = [out / "runs.parquet", *(out / f"{n}.{ext}" for n in tables for ext in ("md", "csv"))]
    if fit is not None:
        done += [out / "powerlaw.md", out / "powerlaw.csv"]
    done += [f.with_suffix(ext) for f in figures for ext in (".png", ".svg")]
    if html is not None:
        done.append(html)
    ui.wrote(*done)
    return 0


def _write_table(out: Path, name: str, table: list, cols: list, text: str) -> None:
    import csv

    from mliscan.paths import atomic_path, atomic_write_text

    atomic_write_text(out / f"{name}.md", text)
    with atomic_path(out / f"{name}.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else cols)
        writer.writeheader()
        writer.writerows(table)
