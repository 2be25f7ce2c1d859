"""A result store that survives interruption and concurrent writers.

Each finished path is one JSON file ``DIR/paths/<path_id>.json``, written atomically, so a
killed run loses only the path in flight and a rerun computes only what is missing. Several
processes (or torchrun ranks) may write the same store: a file is complete or absent, never
half-written, and the merged Parquet tables are rebuilt under a file lock (an OS lock, released
when its holder dies, so a killed process never leaves a stale lock behind).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mliscan.paths import atomic_path, atomic_write_json

PATHS_DIR = "paths"
LOCK_FILE = ".lock"


def path_id(a_hash: str, b_hash: str, settings: dict[str, Any]) -> str:
    """Identity of a path: its two endpoints' content hashes and the evaluation settings."""
    blob = json.dumps({"a": a_hash, "b": b_hash, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / PATHS_DIR).mkdir(parents=True, exist_ok=True)

    def _file(self, pid: str) -> Path:
        return self.root / PATHS_DIR / f"{pid}.json"

    def has(self, pid: str) -> bool:
        return self._file(pid).is_file()

    def put(self, pid: str, record: dict[str, Any]) -> None:
        atomic_write_json(self._file(pid), record)

    def get(self, pid: str) -> dict[str, Any]:
        return json.loads(self._file(pid).read_text())

    def records(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        return [self.get(pid) for pid in ids if self.has(pid)]

    def lock(self):  # type: ignore[no-untyped-def]
        from filelock import FileLock

        return FileLock(str(self.root / LOCK_FILE))

    def write_parquet(self, name: str, rows: list[dict[str, Any]], schema: dict[str, Any]) -> Path:
        """Write rows as a Parquet table atomically, with a fixed schema."""
        import polars as pl

        types = {"str": pl.Utf8, "f64": pl.Float64, "bool": pl.Boolean, "i64": pl.Int64}
        pl_schema = {k: types[v] for k, v in schema.items()}
        frame = pl.DataFrame(
            [{k: r.get(k) for k in schema} for r in rows], schema=pl_schema, orient="row"
        )
        target = self.root / name
        with atomic_path(target) as tmp:
            frame.write_parquet(tmp)
        return target
