"""The paper's tables from a folder of runs (Sections 4.1-4.2, Tables 1-2, Figure 7's fit).

Each run's MLI metrics are computed once and cached beside it in ``mli-<hash>.json``, the
hash taken over the evaluation settings, so a second report is instant and a report with other
settings never reads stale numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mliscan.errors import DataError
from mliscan.identity import file_hash
from mliscan.identity import key as identity_key
from mliscan.metrics import converged, is_monotonic
from mliscan.paths import FINAL_FILE, INIT_FILE, RUN_FILE, atomic_write_json, read_json
from mliscan.pipeline import compare_pair
from mliscan.registry import report_label
from mliscan.spec import EvalSpec, SourceSpec

# Table 1 / Section 4.1: runs count only when their final training loss is below this.
LOSS_THRESHOLDS = {
    "digits": 0.1,
    "mnist": 0.1,
    "fashion-mnist": 0.1,
    "cifar10": 1.0,
    "cifar100": 2.0,
}
AUTOENCODER_LOSS_THRESHOLD = 30.0
# Non-monotonic means min-Delta > tol: the MLP tables used 1e-3, the CIFAR tables 0.
TOLERANCES = {"cifar10": 0.0, "cifar100": 0.0}
TABLE1_TOLERANCE = 1e-3


def cache_key(folder: Path, spec: EvalSpec) -> str:
    """The identity of a run's metrics: its two files' contents and the numeric settings
    (a run retrained in place, or other settings, get another key)."""
    hashes = [file_hash(folder / INIT_FILE), file_hash(folder / FINAL_FILE)]
    return identity_key("report", hashes, spec.numeric_settings(), length=16)


CACHED_KEYS = (
    "min_delta",
    "distance",
    "normalized_distance",
    "gauss_length",
    "barrier",
    "loss_init",
    "loss_final",
    "accuracy_final",
    "alphas",
    "loss",
)


def _cached(path: Path) -> dict[str, Any] | None:
    """A cache file's metrics, or None (with a warning) when it is corrupt or partial."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON, or beyond its bounds
        data = None
    if not isinstance(data, dict) or any(k not in data for k in CACHED_KEYS):
        warnings.warn(f"{path} is not a complete metrics cache: it is recomputed", stacklevel=2)
        return None
    return data


def has_metrics(folder: Path, spec: EvalSpec) -> bool:
    """Whether the run's metrics for ``spec`` are cached (by this or another shard)."""
    return (folder / f"mli-{cache_key(folder, spec)}.json").is_file()


def run_metrics(folder: Path, spec: EvalSpec, source: SourceSpec | None = None) -> dict[str, Any]:
    """The run's MLI metrics, from the cache or computed (and cached) now."""
    cache = folder / f"mli-{cache_key(folder, spec)}.json"
    hit = _cached(cache)
    if hit is not None:
        return hit
    r = compare_pair(
        str(folder / INIT_FILE), str(folder / FINAL_FILE), spec=spec, source=source
    ).to_dict()
    keep = {k: r[k] for k in CACHED_KEYS}
    atomic_write_json(cache, keep)
    return keep


def read_run(folder: Path) -> dict[str, Any]:
    """A run's run.json, checked enough to build its row (a damaged one is named)."""
    path = folder / RUN_FILE
    try:
        run = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: not a readable run record ({exc}); retrain or remove the run"
        ) from exc
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
        raise DataError(f"{path}: not a run record of mliscan train (no 'config' object)")
    return run


def row_of(folder: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    run = read_run(folder)
    cfg = run["config"]
    row: dict[str, Any] = {"run": folder.name, "path": str(folder)}
    for k in (
        "arch",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "epochs",
        "batch_size",
        "seed",
    ):
        row[k] = cfg.get(k)
    row["data"] = (cfg.get("data") or {}).get("name")
    options = run.get("arch_options") or cfg.get("arch_options") or {}
    row["bn"] = bool(options.get("bn", False))
    row["init"] = options.get("init", "default")
    row["scheme"] = report_label(row["arch"], options)  # the adapter names it (Table 2: BN-I)
    row["final_train_loss"] = run.get("final_train_loss")
    row["final_train_accuracy"] = run.get("final_train_accuracy")
    for k in ("min_delta", "distance", "normalized_distance", "gauss_length", "barrier"):
        row[k] = metrics.get(k)
    for k in CURVE_KEYS:  # for the figures; not table columns
        row[k] = metrics.get(k)
    return row


# Row entries that hold a run's curve (used by the figures, left out of the tables).
CURVE_KEYS = ("alphas", "loss")


def table_columns(row: dict[str, Any]) -> list[str]:
    return [k for k in row if k not in CURVE_KEYS]


def default_threshold(rows: Sequence[dict[str, Any]]) -> float:
    if rows and all(r["arch"] == "autoencoder" for r in rows):
        return AUTOENCODER_LOSS_THRESHOLD
    return max((LOSS_THRESHOLDS.get(r["data"], 0.1) for r in rows), default=0.1)


def default_tolerance(rows: Sequence[dict[str, Any]]) -> float:
    return min(
        (TOLERANCES.get(r["data"], TABLE1_TOLERANCE) for r in rows), default=TABLE1_TOLERANCE
    )


def proportion_table(
    rows: Sequence[dict[str, Any]], group_by: Sequence[str], loss_threshold: float, tol: float
) -> list[dict[str, Any]]:
    """Per group: converged runs (final loss < threshold), the non-monotonic share among
    them (min-Delta > tol), and the average min-Delta of the non-monotonic ones."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_by), []).append(r)
    out = []
    for key in sorted(groups, key=lambda t: tuple(str(v) for v in t)):
        members = groups[key]
        ok = [
            r
            for r in members
            if converged(r["final_train_loss"], loss_threshold) and r["min_delta"] is not None
        ]
        nonmono = [r for r in ok if is_monotonic(r["min_delta"], tol) is False]
        out.append(
            {
                **dict(zip(group_by, key, strict=True)),
                "runs": len(members),
                "converged": len(ok),
                "non_monotonic": len(nonmono),
                "proportion": (len(nonmono) / len(ok)) if ok else None,
                "mean_min_delta_nonmonotonic": float(np.mean([r["min_delta"] for r in nonmono]))
                if nonmono
                else None,
            }
        )
    return out


def convergence_note(rows: Sequence[dict[str, Any]], loss_threshold: float) -> str | None:
    """What to say when the tables count no run: none reached a final training loss below
    the threshold (the tables then hold only '-'); None when some did."""
    if not rows or any(converged(r["final_train_loss"], loss_threshold) for r in rows):
        return None
    losses = [r["final_train_loss"] for r in rows if r["final_train_loss"] is not None]
    lowest = f"; the lowest is {min(losses):.3g}" if losses else ""
    return (
        f"no run converged: the tables count runs whose final training loss is below "
        f"{loss_threshold:g}, and none of the {len(rows)} is{lowest}. Train longer (--epochs, "
        "--until-loss) or set --loss-threshold"
    )


def power_law_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least squares of log y = a + b log x (Figure 7): slope b, prefactor e^a, R^2."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = (xs > 0) & (ys > 0) & np.isfinite(xs) & np.isfinite(ys)
    if keep.sum() < 2:
        return {"slope": math.nan, "prefactor": math.nan, "r2": math.nan, "points": int(keep.sum())}
    lx, ly = np.log(xs[keep]), np.log(ys[keep])
    b, a = np.polyfit(lx, ly, 1)
    pred = a + b * lx
    ss_res = float(np.sum((ly - pred) ** 2))
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope": float(b), "prefactor": float(np.exp(a)), "r2": r2, "points": int(keep.sum())}


def collect(
    runs: Sequence[Path],
    spec: EvalSpec,
    on_run: Callable[[Path], None] | None = None,
    source: SourceSpec | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for folder in runs:
        rows.append(row_of(folder, run_metrics(folder, spec, source)))
        if on_run:
            on_run(folder)
    return rows


def markdown(table: Sequence[dict[str, Any]], title: str) -> str:
    if not table:
        return f"### {title}\n\n(no runs)\n"
    cols = list(table[0])
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# The columns of the HTML report's list of runs (those a row has).
RUN_COLUMNS = (
    "run",
    "arch",
    "data",
    "optimizer",
    "lr",
    "bn",
    "seed",
    "final_train_loss",
    "converged",
    "min_delta",
    "monotonic",
    "barrier",
    "gauss_length",
)


def html_page(
    title: str,
    tables: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    figures: Sequence[Path],
    notes: Sequence[str] = (),
    settings: dict[str, Any] | None = None,
    runs: Sequence[dict[str, Any]] = (),
    loss_threshold: float | None = None,
) -> str:
    """One self-contained HTML page: when and by which mliscan it was made, the settings,
    the tables, the figures (embedded as base64 PNG) and every run (``converged`` at
    ``loss_threshold``)."""
    import base64
    import datetime
    import html

    from mliscan import __version__

    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    settings_table = [{"setting": k, "value": v} for k, v in (settings or {}).items()]
    if loss_threshold is not None:
        runs = [
            {**r, "converged": converged(r.get("final_train_loss"), loss_threshold)} for r in runs
        ]
    run_table = [{k: r.get(k) for k in RUN_COLUMNS if k in r} for r in runs]

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "padding:0 1em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid "
        "#ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Made {made} by mliscan {html.escape(__version__)}.</p>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    shown = [*([("Settings", settings_table)] if settings_table else []), *tables]
    shown += [(f"Runs ({len(run_table)})", run_table)] if runs else []
    for heading, table in shown:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if not table:
            parts.append("<p>(no runs)</p>")
            continue
        cols = list(table[0])
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        for r in table:
            cells = "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    for fig in figures:
        data = base64.b64encode(fig.read_bytes()).decode("ascii")
        parts.append(
            f"<h2>{html.escape(fig.stem)}</h2><img alt='{html.escape(fig.stem)}' "
            f"src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
