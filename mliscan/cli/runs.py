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
    status (complete, interrupted, pending), from DIR/runs.parquet.

    Examples:

      mliscan runs runs/

      mliscan train --out runs/ --optimizer sgd,adam --lr 0.01,0.1 && mliscan runs runs/
    """
    from rich.table import Table

    from mliscan.cli import ui
    from mliscan.sweep import read_index

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
    return 0
