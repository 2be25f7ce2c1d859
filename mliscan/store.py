"""A result store that survives interruption, concurrent writers and corruption.

Each finished path is one JSON file ``DIR/paths/<key>.json`` (``mliscan.identity.key``),
written atomically, so a killed run loses only the path in flight and a rerun computes only
what is missing. A file that cannot be read back as a complete record of its own key (cut
short, edited, from another version) is not counted as done: ``load`` warns and returns
None, and the caller recomputes it. Several processes (or torchrun ranks) may write the
same store; the merged Parquet tables are rebuilt under a file lock (an OS lock, released
when its holder dies).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mliscan.paths import atomic_path, atomic_write_json

PATHS_DIR = "paths"
LOCK_FILE = ".lock"


class ResultStore:
    def __init__(
        self, root: str | Path, valid: Callable[[Any], bool] = lambda r: isinstance(r, dict)
    ) -> None:
        self.root = Path(root)
        self.valid = valid
        (self.root / PATHS_DIR).mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.root / PATHS_DIR / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        """The stored record of ``key``; None when absent, or (with a warning) when the file
        is not a complete record of that key."""
        path = self._file(key)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict) or record.get("key", key) != key or not self.valid(record):
            warnings.warn(
                f"{path} is not a complete result (corrupt or cut short): it is recomputed",
                stacklevel=2,
            )
            return None
        return record

    def has(self, key: str) -> bool:
        return self.load(key) is not None

    def put(self, key: str, record: dict[str, Any]) -> None:
        atomic_write_json(self._file(key), {**record, "key": key})

    def get(self, key: str) -> dict[str, Any]:
        record = self.load(key)
        if record is None:
            raise KeyError(key)
        return record

    def records(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        out = []
        for key in keys:
            record = self.load(key)
            if record is not None:
                out.append(record)
        return out

    def lock(self):
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
