"""``mliscan runs DIR``: the runs of a sweep, their settings and status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def runs(
    out: Annotated[
        Path, typer.Argument(metavar="DIR", help="The --out folder of a `mliscan train` sweep.")
    ],
) -> int:
    """List a sweep's run-<hash> folders with the settings that tell them apart and their
    status (complete, interrupted, pending), from DIR/runs.parquet; and, for a study run in
    shards (--shard, --launcher), each shard's progress, job and failure (DIR/shards/).

    Examples:

      mliscan runs runs/

      mliscan train --out runs/ --optimizer sgd,adam --lr 0.01,0.1 && mliscan runs runs/

      mliscan runs grid-out
    """
    from rich.table import Table

    from mliscan.cli import ui
    from mliscan.shard import shard_rows
    from mliscan.sweep import INDEX_TABLE, read_index

    shards = shard_rows(out)
    if shards and not (out / INDEX_TABLE).is_file():  # a grid's, plane's, ... store
        ui.out.print(_shard_table(out, shards))
        return 0
    rows = read_index(out)
    table = Table(title=f"{ui.escape(str(out))}: {len(rows)} runs")
    for col in rows[0] if rows else ["run"]:
        table.add_column(
            ui.escape(str(col)), justify="left" if col in ("run", "status") else "right"
        )
    for r in rows:
        colour = {"complete": "green", "interrupted": "yellow"}.get(str(r["status"]), "dim")
        cells = ["-" if v is None else ui.escape(str(v)) for v in r.values()]
        cells[list(r).index("status")] = f"[{colour}]{r['status']}[/]"
        table.add_row(*cells)
    ui.out.print(table)
    if shards:
        ui.out.print(_shard_table(out, shards))
    return 0


SHARD_COLOURS = {"complete": "green", "running": "cyan", "requeued": "yellow"}


def _shard_table(out: Path, rows: list[dict]) -> object:
    """One row per shard: status (died: its process on this host is gone), its units done,
    where it runs, its job, and the error (or the log to read) of a shard that did not
    finish."""
    from rich.table import Table

    from mliscan.cli import ui

    failed = sum(r["status"] not in ("complete", "running") for r in rows)
    title = f"{ui.escape(str(out))}: {len(rows)} shards" + (
        f", {failed} failed or stopped (--retry-failed resubmits them)" if failed else ""
    )
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="right" if col == "done" else "left")
    for r in rows:
        colour = SHARD_COLOURS.get(str(r["status"]), "red")
        cells = ["-" if v is None else ui.escape(str(v)) for v in r.values()]
        cells[list(r).index("status")] = f"[{colour}]{ui.escape(str(r['status']))}[/]"
        table.add_row(*cells)
    return table
