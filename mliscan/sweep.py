"""Sweeps: list-valued training options expand to a cartesian product of runs.

Each run of a sweep lives in ``OUT/run-<hash>``, the hash taken over the run's *non-default*
settings (``spec.spec_hash``), so adding an option later never renames old runs; ``run.json``
inside is the human-readable record. A run is complete when its ``run.json`` says so; a
rerun of the same command skips complete runs and restarts any other from its initialisation
(which the same seed reproduces byte for byte).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mliscan.errors import UsageError
from mliscan.paths import (
    FINAL_FILE,
    RUN_FILE,
    atomic_path,
    atomic_write_text,
    pause_point,
    read_json,
)
from mliscan.shard import WHOLE, Shard
from mliscan.spec import spec_hash
from mliscan.store import LOCK_FILE, StoreLock
from mliscan.train import TrainSpec, train


def parse_list(text: str, cast: Callable[[str], Any], what: str) -> list[Any]:
    try:
        values = [cast(p.strip()) for p in str(text).split(",") if p.strip()]
    except ValueError as exc:
        raise UsageError(f"{what}: cannot read {text!r} ({exc})") from exc
    if not values:
        raise UsageError(f"{what}: no value in {text!r}")
    return values


# More seeds than this in one sweep is a typo (the sweep itself is capped by --max-runs).
MAX_SEEDS = 100_000


def parse_seeds(text: str) -> list[int]:
    """'0-2' -> [0, 1, 2]; '0,3,5' and '0-2,7' work too."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise UsageError(f"--seeds: empty range {part!r}")
            if hi - lo + 1 + len(seeds) > MAX_SEEDS:
                raise UsageError(
                    f"--seeds {text}: more than {MAX_SEEDS} seeds; is the range a typo?"
                )
            seeds.extend(range(lo, hi + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise UsageError(f"--seeds takes ranges and lists like 0-2 or 0,3,5, got {text!r}")
    return list(dict.fromkeys(seeds))


def parse_onoff(text: str) -> list[bool]:
    out = []
    for v in parse_list(text, str, "--bn"):
        if v not in ("on", "off"):
            raise UsageError(f"--bn takes on, off or on,off, got {text!r}")
        out.append(v == "on")
    return out


def sweep_size(axes: dict[str, Sequence[Any]]) -> int:
    """How many runs ``expand`` would make (computed without making them)."""
    size = 1
    for values in axes.values():
        size *= len(values)
    return size


def expand(base: TrainSpec, axes: dict[str, Sequence[Any]]) -> list[TrainSpec]:
    """The cartesian product of ``axes`` over ``base``. Keys are TrainSpec fields, or
    ``arch_options.NAME`` for adapter options."""
    keys = list(axes)
    specs = []
    for values in itertools.product(*(axes[k] for k in keys)):
        fields: dict[str, Any] = {}
        options = dict(base.arch_options)
        for k, v in zip(keys, values, strict=True):
            if k.startswith("arch_options."):
                options[k.split(".", 1)[1]] = v
            else:
                fields[k] = v
        specs.append(dataclasses.replace(base, arch_options=options, **fields))
    return specs


def run_name(spec: TrainSpec) -> str:
    named = dataclasses.replace(spec, device=TrainSpec().device)
    return f"run-{spec_hash(named)}"


def _record(folder: Path) -> dict[str, Any] | None:
    try:
        record = read_json(folder / RUN_FILE)
    except (OSError, ValueError):  # unreadable, not JSON, or beyond bounds: not finished
        return None
    return record if isinstance(record, dict) else None


def is_complete(folder: Path) -> bool:
    record = _record(folder)
    return (
        record is not None
        and record.get("status") == "complete"
        and (folder / FINAL_FILE).is_file()
    )


def is_diverged(folder: Path) -> bool:
    record = _record(folder)
    return record is not None and record.get("status") == "diverged"


def finished_with(folder: Path, spec: TrainSpec, retry_failed: bool = False) -> bool:
    """Whether ``folder`` holds a finished run of exactly ``spec``: complete, or diverged
    (a result; trained again only with ``retry_failed``)."""
    record = _record(folder)
    if record is None or record.get("config") != json.loads(json.dumps(spec.to_dict())):
        return False
    return is_complete(folder) or (is_diverged(folder) and not retry_failed)


def run_sweep(
    specs: Sequence[TrainSpec],
    out: Path,
    on_run: Callable[[int, int, TrainSpec, Path, bool], None] | None = None,
    on_epoch: Callable[[int, int, float, float], None] | None = None,
    retry_failed: bool = False,
    shard: Shard = WHOLE,
    on_done: Callable[[Path, bool], None] | None = None,
) -> list[Path]:
    """Train every run of ``shard`` (every run by default; shard K of N takes runs K, K+N,
    ...) that is not finished yet (a diverged run is finished unless ``retry_failed``);
    returns all the run folders in order. ``on_run(i, n, ...)`` counts the shard's runs;
    ``on_done(folder, trained)`` follows each of them."""
    folders = []
    names = [run_name(s) for s in specs]
    if len(set(names)) != len(names):
        raise UsageError("the sweep lists the same run twice")
    folders = [out / name for name in names]
    write_index(out, specs, folders)  # before training: the hashes are readable at once
    mine = [i for i in range(len(specs)) if shard.owns(i)]
    for position, i in enumerate(mine):
        spec, folder = specs[i], folders[i]
        done = is_complete(folder) or (is_diverged(folder) and not retry_failed)
        if on_run:
            on_run(position, len(mine), spec, folder, done)
        if not done:
            try:
                train(spec, folder, on_epoch=on_epoch)
            finally:
                write_index(out, specs, folders)
        if on_done:
            on_done(folder, not done)
        if not done:
            pause_point(out)
    return folders


INDEX_FILE = "index.md"
INDEX_TABLE = "runs.parquet"
# The settings that vary between runs of a sweep are listed; these are always shown.
INDEX_ALWAYS = ("optimizer", "lr", "seed")


def run_status(folder: Path) -> str:
    """complete, diverged, interrupted (a folder without a finished run.json) or pending."""
    if is_complete(folder):
        return "complete"
    if is_diverged(folder):
        return "diverged"
    return "interrupted" if folder.exists() else "pending"


def index_rows(specs: Sequence[TrainSpec], folders: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per run: its folder, the settings that tell it apart, its status and, when
    complete, its final training loss."""
    flat = [_flatten(s) for s in specs]
    varying = [k for k in flat[0] if any(f[k] != flat[0][k] for f in flat)] if flat else []
    keys = list(dict.fromkeys([*INDEX_ALWAYS, *varying]))
    rows = []
    for f, folder in zip(flat, folders, strict=True):
        row: dict[str, Any] = {"run": folder.name}
        row.update({k: f.get(k) for k in keys})
        row["status"] = run_status(folder)
        row["final_train_loss"] = _final_loss(folder) if row["status"] == "complete" else None
        rows.append(row)
    return rows


def _flatten(spec: TrainSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in dataclasses.asdict(spec).items():
        if k == "arch_options":
            out.update(v)
        elif k == "data":
            out["data"] = v.get("name")
        elif k != "device":
            out[k] = v
    return out


def _final_loss(folder: Path) -> float | None:
    record = _record(folder)
    value = None if record is None else record.get("final_train_loss")
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def index_markdown(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "# Sweep runs\n\n(none)\n"
    cols = list(rows[0])
    lines = [
        "# Sweep runs",
        "",
        "Each run-<hash> folder, the settings that tell it apart, and its status "
        "(`mliscan runs DIR` prints this table).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + " --- |" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join("-" if r[c] is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_index(out: Path, specs: Sequence[TrainSpec], folders: Sequence[Path]) -> None:
    """``index.md`` and ``runs.parquet`` beside the run folders (atomically, under the
    folder's lock: shards of one sweep write them in turn, each from every run's status as
    it is then, so the last one written is never older than another)."""
    import polars as pl

    out.mkdir(parents=True, exist_ok=True)
    with StoreLock(out / LOCK_FILE):
        rows = index_rows(specs, folders)
        atomic_write_text(out / INDEX_FILE, index_markdown(rows))
        with atomic_path(out / INDEX_TABLE) as tmp:
            pl.DataFrame(
                [{k: (None if v is None else str(v)) for k, v in r.items()} for r in rows]
            ).write_parquet(tmp)


def read_index(out: Path) -> list[dict[str, Any]]:
    """The rows of a sweep's runs.parquet, with each status read again from its folder."""
    import polars as pl

    path = out / INDEX_TABLE
    if not path.is_file():
        raise UsageError(f"{out}: no {INDEX_TABLE} here (is it the --out folder of a sweep?)")
    try:
        with open(path, "rb") as f:  # the name as written: polars would expand s[1] as a glob
            rows = pl.read_parquet(f).to_dicts()
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise UsageError(f"{path}: not a readable runs table ({exc})") from exc
    for r in rows:
        folder = out / str(r.get("run"))
        r["status"] = run_status(folder)
        loss = _final_loss(folder) if r["status"] == "complete" else None
        r["final_train_loss"] = None if loss is None else f"{loss:.4g}"
    return rows
