"""Terminal presentation: progress on stderr, tables and sparklines."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from rich.console import Console, JustifyMethod
from rich.markup import escape as escape  # re-exported for the commands
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mliscan.record import PathRecord, as_record


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


def _gauss_text(r: PathRecord) -> str:
    return "skipped" if r.gauss_integrand is None else fmt(r.gauss_length)


def _mono_text(r: PathRecord) -> str:
    mono = r.monotonic
    tol = r.tolerance
    if mono is None:
        return "undefined"
    return f"[green]yes[/] (min-Δ ≤ {tol:g})" if mono else f"[red]NO[/] (min-Δ > {tol:g})"


def _bn_text(bn: Mapping[str, Any]) -> str:
    if bn["mode"] == "interpolate":
        return "interpolated running statistics"
    if bn["mode"] == "exact" and bn["batch_size"] == "all":
        text = "exact, whole data"
    else:
        text = f"{bn['mode']}, batch {bn['batch_size']}"
    if bn.get("max_batches"):
        text += f", ≤{bn['max_batches']} batches"
    if bn.get("variance") == "unbiased":
        text += ", unbiased variance"
    return text


def result_table(record: PathRecord | Mapping[str, Any]) -> Table:
    """One path as a two-column table (metric, value)."""
    r = as_record(record)
    table = Table(title=f"MLI: {escape(r.name)}", title_style="bold", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    loss = [float("nan") if v is None else v for v in r.loss]
    rows = [
        ("loss at α=0 → α=1", f"{fmt(r.loss_init)} → {fmt(r.loss_final)}"),
        ("loss curve", sparkline(loss, 50)),
        ("min-Δ (largest rise)", fmt(r.min_delta)),
        ("monotonic", _mono_text(r)),
        ("barrier", fmt(r.barrier)),
        ("weight distance ‖θ_T − θ₀‖", fmt(r.distance)),
        ("normalized distance / ‖θ₀‖", fmt(r.normalized_distance)),
        ("average Gauss length", _gauss_text(r)),
        ("final accuracy", fmt(r.accuracy_final)),
        (
            "arch · data",
            escape(f"{r.arch} · {r.data['name']} ({r.data['examples']} examples)"),
        ),
        ("alphas · BN statistics", f"{len(r.alphas)} · {_bn_text(r.bn)}"),
    ]
    a = r.alignment
    if a:
        rows.append(
            (
                "aligned (weight matching)",
                f"{a['units_moved']} units moved; unaligned: distance "
                f"{fmt(a['unaligned_distance'])}, min-Δ {fmt(a['unaligned_min_delta'])}, "
                f"barrier {fmt(a['unaligned_barrier'])}",
            )
        )
    for k, v in rows:
        table.add_row(k, v)
    return table


def results_table(
    records: Sequence[PathRecord | Mapping[str, Any]],
    title: str = "Monotonic linear interpolation",
) -> Table:
    """One row per path (``PathResult.record()``; a ``to_dict`` object is read as one)."""
    table = Table(title=escape(title), title_style="bold")
    cols: list[tuple[str, JustifyMethod]] = [
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
    for r in map(as_record, records):
        mono = r.monotonic
        mono_text = "undefined" if mono is None else ("[green]yes[/]" if mono else "[red]NO[/]")
        loss = [float("nan") if v is None else v for v in r.loss]
        table.add_row(
            escape(r.name),
            fmt(r.loss_init),
            fmt(r.loss_final),
            fmt(r.min_delta),
            mono_text,
            fmt(r.distance),
            fmt(r.normalized_distance),
            "—" if r.gauss_integrand is None else fmt(r.gauss_length),
            fmt(r.barrier),
            fmt(r.accuracy_final),
            sparkline(loss, 20),
        )
    return table


class _Cell(NamedTuple):
    """What a heatmap cell shows of a path."""

    a: str | None
    b: str | None
    monotonic: bool | None
    own_pair: bool | None
    min_delta: float | None
    barrier: float | None


def _cell(r: PathRecord | Mapping[str, Any], tolerance: float) -> _Cell:
    """A path's cell: from its record (judged at ``tolerance``), or from a ``paths.parquet``
    row (a dict without the curve, as grid callers passed before they held records)."""
    if isinstance(r, Mapping) and "alphas" not in r:
        return _Cell(*(r.get(k) for k in _Cell._fields))
    rec = as_record(r, tolerance)
    return _Cell(rec.a, rec.b, rec.monotonic, rec.own_pair, rec.min_delta, rec.barrier)


def heatmap(
    records: Sequence[PathRecord | Mapping[str, Any]], family: str, tolerance: float
) -> Table:
    """min-Δ (and barrier) per (a, b) of a family's paths as a coloured matrix: green
    monotonic at ``tolerance``, red not."""
    cells = [_cell(r, tolerance) for r in records]
    a_labels = list(dict.fromkeys(c.a for c in cells))
    b_labels = list(dict.fromkeys(c.b for c in cells))
    by_pair = {(c.a, c.b): c for c in cells}
    table = Table(
        title=f"{family}: min-Δ / barrier (green: monotonic at tol {tolerance:g})",
        title_style="bold",
    )
    table.add_column("a \\ b", style="bold")
    for b in b_labels:
        table.add_column(escape(str(b)), justify="right")
    for a in a_labels:
        values = []
        for b in b_labels:
            c = by_pair.get((a, b))
            if c is None:
                values.append("")
                continue
            colour = "green" if c.monotonic else ("red" if c.monotonic is False else "yellow")
            own = "*" if c.own_pair else ""
            values.append(f"[{colour}]{fmt(c.min_delta, 3)}[/] / {fmt(c.barrier, 3)}{own}")
        table.add_row(escape(str(a)), *values)
    if any(c.own_pair for c in cells):
        table.caption = "* own pair (the optimum trained from this initialisation)"
    return table


def trajectory_table(rows: Sequence[dict[str, Any]], tolerance: float) -> Table:
    """One line per checkpoint: the path from θ₀ and the path to θ_T (min-Δ coloured green
    when monotonic at the tolerance)."""
    table = Table(
        title=f"MLI along training (green: monotonic at tol {tolerance:g})", title_style="bold"
    )
    for name in ("step", "checkpoint", "loss", "min-Δ from θ₀", "min-Δ to θ_T"):
        table.add_column(name, justify="left" if name == "checkpoint" else "right")
    for name in (
        "barrier from θ₀",
        "barrier to θ_T",
        "dist from θ₀",
        "dist to θ_T",
        "Gauss from θ₀",
    ):
        table.add_column(name, justify="right")

    def delta(r: dict[str, Any], d: str) -> str:
        mono = r[f"monotonic_{d}"]
        colour = "green" if mono else ("red" if mono is False else "yellow")
        return f"[{colour}]{fmt(r[f'min_delta_{d}'], 3)}[/]"

    for r in rows:
        table.add_row(
            "" if r["step"] is None else str(r["step"]),
            escape(str(r["label"])),
            fmt(r.get("loss")),
            delta(r, "from_init"),
            delta(r, "to_final"),
            fmt(r["barrier_from_init"], 3),
            fmt(r["barrier_to_final"], 3),
            fmt(r["distance_from_init"], 3),
            fmt(r["distance_to_final"], 3),
            fmt(r["gauss_length_from_init"], 3),
        )
    return table


# Progress when stderr is not a terminal (nohup, SLURM, CI logs): one timestamped line at
# most every PROGRESS_INTERVAL seconds (and at the start and the end of each task).
PROGRESS_INTERVAL = 10.0


def progress_interval() -> float:
    """Seconds between progress lines: ``$MLISCAN_PROGRESS_INTERVAL``, else 10."""
    from mliscan.paths import env_value

    return env_value("MLISCAN_PROGRESS_INTERVAL", PROGRESS_INTERVAL)


# The longest description a bar shows (an 80-column terminal keeps the counts and the ETA).
DESCRIPTION_WIDTH = 24
ITEM_WIDTH = 30


def _clip(text: str, width: int = DESCRIPTION_WIDTH, keep_end: bool = True) -> str:
    """Fit a description in ``width`` characters: paths keep their end, items their start."""
    if len(text) <= width:
        return text
    return "…" + text[-(width - 1) :] if keep_end else text[: width - 1] + "…"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """Plain progress lines for logs: ``2026-12-01 05:40:12 compare run0: 12/50 α, loss
    0.123, 0:03 elapsed, ETA 0:09``; the same updates as a rich task."""

    def __init__(self, label: str, total: int, unit: str, show_loss: bool) -> None:
        import time

        self.clock = time.monotonic
        self.label, self.total, self.unit, self.show_loss = label, total, unit, show_loss
        self.completed, self.loss, self.item = 0, "…", ""
        self.interval = progress_interval()
        self.start = self.clock()
        self.last = -math.inf  # the first update prints (not the start: an early error
        # then stays the only line on stderr)

    def update(self, **kw: Any) -> None:
        self.completed = kw.get("completed", self.completed)
        self.total = kw.get("total", self.total)
        self.loss = kw.get("loss", self.loss)
        self.item = kw.get("item", self.item)
        self._emit(force=self.completed >= self.total)

    def _emit(self, force: bool = False) -> None:
        import datetime

        now = self.clock()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.start
        parts = [f"{self.completed}/{self.total} {self.unit}".rstrip()]
        if self.item:
            parts.append(str(self.item))
        if self.show_loss:
            parts.append(f"loss {self.loss}")
        parts.append(f"{_duration(elapsed)} elapsed")
        if 0 < self.completed < self.total:
            parts.append(
                f"ETA {_duration(elapsed / self.completed * (self.total - self.completed))}"
            )
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {self.label}: {', '.join(parts)}", file=sys.stderr, flush=True)


@contextmanager
def _bar(label: str, total: int, quiet: bool, unit: str, show_loss: bool) -> Iterator[Any]:
    """Progress on stderr: a transient bar in a terminal, plain timestamped lines otherwise;
    yields an updater taking completed=, total=, loss=, item= (None when quiet)."""
    if quiet:
        yield None
        return
    if not err.is_terminal:
        lines = LineProgress(label, total, unit, show_loss)
        yield lines.update
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=12),
        TextColumn("{task.completed}/{task.total} " + unit),
    ]
    if show_loss:
        columns.append(TextColumn("loss {task.fields[loss]}"))
    columns.append(TextColumn("{task.fields[item]}"))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(escape(_clip(label)), total=total, loss="…", item="")

        def update(**kw: Any) -> None:
            if "item" in kw:
                kw["item"] = escape(_clip(str(kw["item"]), ITEM_WIDTH, keep_end=False))
            progress.update(task, **kw)

        yield update


@contextmanager
def alpha_progress(total: int, label: str, quiet: bool) -> Iterator[Any]:
    """Progress over alphas; yields the engine's callback (index, alpha, loss)."""
    with _bar(label, total, quiet, "α", True) as update:
        yield (
            None if update is None else (lambda i, a, loss: update(completed=i + 1, loss=fmt(loss)))
        )


@contextmanager
def epoch_progress(total: int, label: str, quiet: bool) -> Iterator[Any]:
    """Progress over epochs; yields the trainer's callback (epoch, epochs, loss, accuracy).
    The loss shown is the epoch's mean training-batch loss ("epoch loss")."""
    with _bar(label, total, quiet, "epochs", False) as update:
        yield (
            None
            if update is None
            else (
                lambda e, n, loss, acc: update(completed=e, total=n, item=f"epoch loss {fmt(loss)}")
            )
        )


@contextmanager
def count_progress(total: int, label: str, quiet: bool) -> Iterator[Any]:
    """Progress over work items; yields tick(item=None), called after each item with the
    name of the next one (shown as the current item)."""
    done = 0

    with _bar(label, total, quiet, "", False) as update:

        def tick(item: str | None = None) -> None:
            nonlocal done
            done += 1
            if update is not None:
                update(completed=done, **({"item": item} if item is not None else {}))

        yield tick


@contextmanager
def sweep_progress(n_runs: int, epochs: int, quiet: bool) -> Iterator[tuple[Any, Any]]:
    """One display for a sweep: run k of n with the overall ETA and the current run's
    settings, and that run's epochs. Yields (on_run, on_epoch) callbacks."""
    with _bar("sweep", n_runs, quiet, "runs", False) as runs:
        if runs is None:
            yield None, None
            return
        state = {"label": ""}

        def on_run(i: int, n: int, label: str, done: bool) -> None:
            state["label"] = label
            runs(completed=i, item=label + (" (done)" if done else ""))

        def on_epoch(e: int, n: int, loss: float, acc: float) -> None:
            runs(item=f"epoch {e}/{n} {state['label']} (epoch loss {fmt(loss)})")

        yield on_run, on_epoch
        runs(completed=n_runs)


def wrote(*paths: Any) -> None:
    """Say on stderr what a command wrote (one line per output)."""
    for p in paths:
        err.print(f"wrote {escape(str(p))}", highlight=False)
