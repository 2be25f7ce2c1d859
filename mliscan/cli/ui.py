"""Terminal presentation: progress on stderr, tables and sparklines."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape as escape  # re-exported for the commands
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def _width(stream: Any = None) -> int | None:
    """Full width in a terminal; a generous fixed width in pipes, logs and CI."""
    if (stream or sys.stdout).isatty():
        return None
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    return max(columns, 160)


# Messages on stderr are never wrapped: one message, one line, whatever the width.
err = Console(stderr=True, width=_width(sys.stderr), soft_wrap=True)
out = Console(width=_width())

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int | None = None) -> str:
    """Unicode sparkline of a curve (NaN/Inf shown as '×')."""
    vals = [float(v) for v in values]
    if width is not None and len(vals) > width:
        step = len(vals) / width
        vals = [vals[int(i * step)] for i in range(width - 1)] + [vals[-1]]
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return "×" * len(vals)
    lo, hi = min(finite), max(finite)
    span = hi - lo
    chars = []
    for v in vals:
        if not math.isfinite(v):
            chars.append("×")
        elif span == 0:
            chars.append(BLOCKS[0])
        else:
            chars.append(BLOCKS[min(len(BLOCKS) - 1, int((v - lo) / span * len(BLOCKS)))])
    return "".join(chars)


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "undefined"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "undefined"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.3e}"
        return f"{x:.{digits}f}"
    return str(x)


def _gauss_text(r: dict[str, Any]) -> str:
    return "skipped" if r["gauss_integrand"] is None else fmt(r["gauss_length"])


def _mono_text(r: dict[str, Any]) -> str:
    mono = r["monotonic"]
    tol = r["tolerance"]
    if mono is None:
        return "undefined"
    return f"[green]yes[/] (min-Δ ≤ {tol:g})" if mono else f"[red]NO[/] (min-Δ > {tol:g})"


def _bn_text(bn: dict[str, Any]) -> str:
    if bn["mode"] == "exact" and bn["batch_size"] == "all":
        return "exact, whole data"
    text = f"{bn['mode']}, batch {bn['batch_size']}"
    if bn.get("max_batches"):
        text += f", ≤{bn['max_batches']} batches"
    return text


def result_table(r: dict[str, Any]) -> Table:
    """One path as a two-column table (metric, value)."""
    table = Table(title=f"MLI: {r.get('label', r['final'])}", title_style="bold", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    loss = [float("nan") if v is None else v for v in r["loss"]]
    rows = [
        ("loss at α=0 → α=1", f"{fmt(r['loss_init'])} → {fmt(r['loss_final'])}"),
        ("loss curve", sparkline(loss, 50)),
        ("min-Δ (largest rise)", fmt(r["min_delta"])),
        ("monotonic", _mono_text(r)),
        ("barrier", fmt(r["barrier"])),
        ("weight distance ‖θ_T − θ₀‖", fmt(r["distance"])),
        ("normalized distance / ‖θ₀‖", fmt(r["normalized_distance"])),
        ("average Gauss length", _gauss_text(r)),
        ("final accuracy", fmt(r["accuracy_final"])),
        ("arch · data", f"{r['arch']} · {r['data']['name']} ({r['data']['examples']} examples)"),
        ("alphas · BN statistics", f"{len(r['alphas'])} · {_bn_text(r['bn'])}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def results_table(
    rows: Sequence[dict[str, Any]], title: str = "Monotonic linear interpolation"
) -> Table:
    """One row per path, from result dicts (``PathResult.to_dict``)."""
    table = Table(title=title, title_style="bold")
    cols = [
        ("path", "left"),
        ("L(0)", "right"),
        ("L(1)", "right"),
        ("min-Δ", "right"),
        ("monotonic", "center"),
        ("distance", "right"),
        ("dist/‖θ₀‖", "right"),
        ("Gauss len", "right"),
        ("barrier", "right"),
        ("final acc", "right"),
        ("loss curve", "left"),
    ]
    for name, justify in cols:
        table.add_column(name, justify=justify, no_wrap=name == "loss curve")
    for r in rows:
        mono = r["monotonic"]
        mono_text = "undefined" if mono is None else ("[green]yes[/]" if mono else "[red]NO[/]")
        loss = [float("nan") if v is None else v for v in r["loss"]]
        table.add_row(
            r.get("label", r["final"]),
            fmt(r["loss_init"]),
            fmt(r["loss_final"]),
            fmt(r["min_delta"]),
            mono_text,
            fmt(r["distance"]),
            fmt(r["normalized_distance"]),
            "—"
            if r["gauss_length"] is None and r["gauss_integrand"] is None
            else fmt(r["gauss_length"]),
            fmt(r["barrier"]),
            fmt(r["accuracy_final"]),
            sparkline(loss, 20),
        )
    return table


def _short(label: str) -> str:
    return label.split(":", 1)[-1]


def heatmap(rows: Sequence[dict[str, Any]], family: str, tolerance: float) -> Table:
    """min-Δ (and barrier) per (a, b) as a coloured matrix: green monotonic, red not."""
    a_labels = list(dict.fromkeys(r["a"] for r in rows))
    b_labels = list(dict.fromkeys(r["b"] for r in rows))
    cell = {(r["a"], r["b"]): r for r in rows}
    table = Table(
        title=f"{family}: min-Δ / barrier (green: monotonic at tol {tolerance:g})",
        title_style="bold",
    )
    table.add_column("a \\ b", style="bold")
    for b in b_labels:
        table.add_column(_short(b), justify="right")
    for a in a_labels:
        values = []
        for b in b_labels:
            r = cell.get((a, b))
            if r is None:
                values.append("")
                continue
            colour = "green" if r["monotonic"] else ("red" if r["monotonic"] is False else "yellow")
            own = "*" if r.get("own_pair") else ""
            values.append(f"[{colour}]{fmt(r['min_delta'], 3)}[/] / {fmt(r['barrier'], 3)}{own}")
        table.add_row(_short(a), *values)
    if any(r.get("own_pair") for r in rows):
        table.caption = "* own pair (the optimum trained from this initialisation)"
    return table


@contextmanager
def _bar(label: str, total: int, quiet: bool, unit: str, show_loss: bool) -> Iterator[Any]:
    """A transient progress bar on stderr; yields the rich task updater (None when quiet)."""
    if quiet:
        yield None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn(unit)]
    if show_loss:
        columns.append(TextColumn("loss {task.fields[loss]}"))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(label, total=total, loss="…")
        yield lambda **kw: progress.update(task, **kw)


@contextmanager
def alpha_progress(total: int, label: str, quiet: bool) -> Iterator[Any]:
    """Progress over alphas; yields the engine's callback (index, alpha, loss)."""
    with _bar(label, total, quiet, "{task.completed}/{task.total} α", True) as update:
        yield (
            None if update is None else (lambda i, a, loss: update(completed=i + 1, loss=fmt(loss)))
        )


@contextmanager
def epoch_progress(total: int, label: str, quiet: bool) -> Iterator[Any]:
    """Progress over epochs; yields the trainer's callback (epoch, epochs, loss, accuracy)."""
    with _bar(label, total, quiet, "epoch {task.completed}/{task.total}", True) as update:
        yield (
            None
            if update is None
            else (lambda e, n, loss, acc: update(completed=e, total=n, loss=fmt(loss)))
        )


@contextmanager
def count_progress(total: int, label: str, quiet: bool) -> Iterator[Any]:
    """Progress over work items; yields a tick() callback."""
    done = 0

    with _bar(label, total, quiet, "{task.completed}/{task.total}", False) as update:

        def tick() -> None:
            nonlocal done
            done += 1
            if update is not None:
                update(completed=done)

        yield tick


@contextmanager
def sweep_progress(n_runs: int, epochs: int, quiet: bool) -> Iterator[tuple[Any, Any]]:
    """One display for a sweep: run k of n with the overall ETA, and the current run's epochs
    and loss. Yields (on_run, on_epoch) callbacks."""
    if quiet:
        yield None, None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=True) as progress:
        runs = progress.add_task("runs", total=n_runs, info="")
        ep = progress.add_task("epochs", total=epochs, info="")

        def on_run(i: int, n: int, label: str, done: bool) -> None:
            progress.update(runs, completed=i, info=label + (" (done, skipped)" if done else ""))
            progress.reset(ep, total=epochs, info="")

        def on_epoch(e: int, n: int, loss: float, acc: float) -> None:
            progress.update(ep, completed=e, total=n, info=f"loss {fmt(loss)}")

        yield on_run, on_epoch
        progress.update(runs, completed=n_runs)
