"""Path conventions and atomic writes, in one place.

Nothing is written in place: every output goes to a temporary sibling first and is renamed
over the target, so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mliscan.errors import UsageError

INIT_FILE = "init.safetensors"
FINAL_FILE = "final.safetensors"
RUN_FILE = "run.json"


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it over ``path`` if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def find_runs(dirs: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding run.json, init and final) under the given folders, sorted."""

    runs: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise UsageError(f"{root}: not a folder of runs")
        for run_json in root.rglob(RUN_FILE):
            run = run_json.parent
            if (run / INIT_FILE).is_file() and (run / FINAL_FILE).is_file():
                runs.add(run)
    return sorted(runs)


def mliscan_cache_dir() -> Path:
    """mliscan's own cache (fresh initialisations, streamed datasets): ``$MLISCAN_CACHE``,
    else ``$XDG_CACHE_HOME/mliscan`` or ``~/.cache/mliscan``."""
    if os.environ.get("MLISCAN_CACHE"):
        return Path(os.environ["MLISCAN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "mliscan"
