"""``mliscan adapters``: the registered architectures."""

from __future__ import annotations

import dataclasses


def adapters() -> int:
    """List the architecture adapters (built-in and plugins) with their options.

    Examples:

      mliscan adapters
    """
    from rich.table import Table

    from mliscan import registry
    from mliscan.cli import ui

    table = Table(title="Architecture adapters (entry-point group mliscan.adapters)")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("options (default)")
    for a in registry.all_adapters():
        opts = ", ".join(f"{f.name}={_show(f.default)}" for f in dataclasses.fields(a.Options))
        table.add_row(ui.escape(a.name), ui.escape(a.description), ui.escape(opts or "—"))
    ui.out.print(table)
    return 0


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
