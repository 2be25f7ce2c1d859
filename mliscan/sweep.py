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
from mliscan.paths import FINAL_FILE, RUN_FILE
from mliscan.spec import spec_hash
from mliscan.train import TrainSpec, train


def parse_list(text: str, cast: Callable[[str], Any], what: str) -> list[Any]:
    try:
        values = [cast(p.strip()) for p in str(text).split(",") if p.strip()]
    except ValueError as exc:
        raise UsageError(f"{what}: cannot read {text!r} ({exc})") from exc
    if not values:
        raise UsageError(f"{what}: no value in {text!r}")
    return values


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


def is_complete(folder: Path) -> bool:
    try:
        record = json.loads((folder / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("status") == "complete" and (folder / FINAL_FILE).is_file()


def run_sweep(
    specs: Sequence[TrainSpec],
    out: Path,
    on_run: Callable[[int, int, TrainSpec, Path, bool], None] | None = None,
    on_epoch: Callable[[int, int, float, float], None] | None = None,
) -> list[Path]:
    """Train every run that is not complete yet; returns the run folders in order."""
    folders = []
    names = [run_name(s) for s in specs]
    if len(set(names)) != len(names):
        raise UsageError("the sweep lists the same run twice")
    for i, (spec, name) in enumerate(zip(specs, names, strict=True)):
        folder = out / name
        folders.append(folder)
        done = is_complete(folder)
        if on_run:
            on_run(i, len(specs), spec, folder, done)
        if not done:
            train(spec, folder, on_epoch=on_epoch)
    return folders
