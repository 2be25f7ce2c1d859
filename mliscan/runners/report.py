"""The report study: Table 1 / Table 2 forms and the Gauss-length power law (Figure 7) over
trained runs; each run's metrics cached in its folder, shared by shards. ``mliscan report``
and ``mliscan.report`` both run :func:`run_report`."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mliscan import reporting as rp
from mliscan import schemas
from mliscan.errors import UsageError
from mliscan.metrics import is_monotonic
from mliscan.paths import atomic_path, atomic_write_text, find_runs
from mliscan.runners.events import SILENT, Events
from mliscan.shard import WHOLE, Shard, ShardLog
from mliscan.spec import EvalSpec, ReportSpec, SourceSpec
from mliscan.store import ResultStore

TABLES = {
    "table1": (
        ["optimizer", "bn", "lr"],
        "Table 1 form: non-monotonic proportion (converged runs)",
    ),
    "table2": (
        ["scheme", "optimizer"],
        "Table 2 form: non-monotonic proportion and mean min-Δ",
    ),
}


@dataclass(frozen=True)
class ReportStudy:
    runs: tuple[Path, ...]
    out: Path
    source: SourceSpec = field(default_factory=SourceSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    shard: Shard = WHOLE


@dataclass
class Table:
    name: str
    columns: list[str]
    heading: str
    rows: list[dict[str, Any]]

    def markdown(self) -> str:
        return rp.markdown(self.rows, self.heading)


@dataclass
class ReportOutcome:
    """The runs' rows and tables once every run's metrics are computed (``complete``)."""

    complete: bool
    runs_total: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    threshold: float = math.nan
    tolerance: float = math.nan
    fit: dict[str, Any] | None = None
    unconverged: str | None = None
    files: list[str] = field(default_factory=list)


def runs_schema(row: dict[str, Any]) -> dict[str, str]:
    """The runs.parquet columns of a row (the report's table columns) and their types."""
    return schemas.runs_schema(row, rp.table_columns(row))


def run_report(study: ReportStudy, events: Events = SILENT) -> ReportOutcome:
    """Every run's metrics (this shard's computed, cached in the run folders); when all are
    in, the tables written to ``out`` (runs.parquet, table1/table2[/grouped][/powerlaw]
    .md and .csv)."""
    spec, rs, part, out = study.eval, study.report, study.shard, study.out
    folders = find_runs(study.runs)
    if not folders:
        raise UsageError("no runs found: the folders hold no run.json with init and final weights")
    mine = [f for i, f in enumerate(folders) if part.owns(i)]
    log = ShardLog(out, part, "report", len(folders))
    with log, events.progress(len(mine), "runs") as tick:

        def done(folder: Path) -> None:
            tick(folder.name)
            log.unit()

        rows = rp.collect(mine, spec, on_run=done, source=study.source)
    if not part.whole:  # the shard that finds every run's metrics cached writes the tables
        left = sum(not rp.has_metrics(f, spec) for f in folders)
        if left:
            events.say(
                f"report: shard {part.label} is done; {len(folders) - left} of the "
                f"{len(folders)} runs have their metrics, and the shard that computes the last "
                "one writes the tables"
            )
            return ReportOutcome(False, len(folders))
        rows = rp.collect(folders, spec, source=study.source)  # from the caches
    threshold = rp.default_threshold(rows) if rs.loss_threshold is None else rs.loss_threshold
    tolerance = rp.default_tolerance(rows) if rs.tol is None else rs.tol
    for r in rows:
        r["monotonic"] = is_monotonic(
            math.nan if r["min_delta"] is None else r["min_delta"], tolerance
        )
    tables = dict(TABLES)
    if rs.group_by:
        grouped = [c.strip() for c in rs.group_by.split(",") if c.strip()]
        unknown = [c for c in grouped if c not in rows[0]]
        if unknown:
            raise UsageError(
                f"--group-by: unknown column(s) {', '.join(unknown)}; columns: {', '.join(rows[0])}"
            )
        tables["grouped"] = (grouped, f"Grouped by {rs.group_by}")
    schema = runs_schema(rows[0])
    ResultStore(out).write_parquet(
        "runs.parquet", [{k: r[k] for k in schema} for r in rows], schema
    )
    outcome = ReportOutcome(True, len(folders), rows, threshold=threshold, tolerance=tolerance)
    outcome.files.append("runs.parquet")
    for name, (cols, title) in tables.items():
        heading = f"{title} (loss < {threshold:g}, min-Δ > {tolerance:g})"
        table = Table(name, cols, heading, rp.proportion_table(rows, cols, threshold, tolerance))
        _write_table(out, table)
        outcome.tables.append(table)
        outcome.files += [f"{name}.md", f"{name}.csv"]
    outcome.unconverged = rp.convergence_note(rows, threshold)
    if spec.gauss:
        fit = rp.power_law_fit(
            [r["normalized_distance"] for r in rows], [r["gauss_length"] for r in rows]
        )
        fit_rows = [{"fit": "Gauss length = prefactor x distance^slope", **fit}]
        heading = "Figure 7: power-law fit of Gauss length against normalized distance"
        table = Table("powerlaw", list(fit_rows[0]), heading, fit_rows)
        _write_table(out, table)
        outcome.tables.append(table)
        outcome.fit = fit
        outcome.files += ["powerlaw.md", "powerlaw.csv"]
    return outcome


def _write_table(out: Path, table: Table) -> None:
    atomic_write_text(out / f"{table.name}.md", table.markdown())
    with atomic_path(out / f"{table.name}.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table.rows[0]) if table.rows else table.columns)
        writer.writeheader()
        writer.writerows(table.rows)
