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

import contextlib
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mliscan.errors import UsageError
from mliscan.paths import atomic_path, atomic_write_json, env_value, pause_point, read_json
from mliscan.record import PathRecord
from mliscan.schemas import polars_schema

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
            record = read_json(path)
        except (OSError, ValueError):  # unreadable, not JSON, or beyond bounds: recomputed
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

    def put(self, key: str, record: Mapping[str, Any] | PathRecord) -> None:
        """Store ``record`` under ``key`` (a path's record in its stored form)."""
        data = record.to_stored() if isinstance(record, PathRecord) else record
        atomic_write_json(self._file(key), {**data, "key": key})
        pause_point(self.root)

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

    def path_records(self, keys: Iterable[str], tolerance: float) -> list[PathRecord]:
        """The stored paths of ``keys`` as records judged at ``tolerance`` (those present)."""
        return [PathRecord.from_json(r, tolerance) for r in self.records(keys)]

    def lock(self, timeout: float | None = None) -> StoreLock:
        """The store's lock (an OS lock, released when its holder dies). A wait says who
        holds it; after ``timeout`` seconds (``$MLISCAN_LOCK_TIMEOUT``, default 300) it
        gives up with a StoreLockedError naming the holder."""
        return StoreLock(self.root / LOCK_FILE, timeout)

    def write_parquet(
        self, name: str, rows: list[dict[str, Any]], schema: Mapping[str, str]
    ) -> Path:
        """Write rows as a Parquet table atomically, with a fixed schema (``mliscan.schemas``)."""
        import polars as pl

        frame = pl.DataFrame(
            [{k: r.get(k) for k in schema} for r in rows],
            schema=polars_schema(schema),
            orient="row",
        )
        target = self.root / name
        with atomic_path(target) as tmp:
            frame.write_parquet(tmp)
        return target


# How long a command waits for another process's lock on a store before giving up.
DEFAULT_LOCK_TIMEOUT = 300.0
# After this many seconds of waiting, say who holds the lock.
LOCK_NOTICE_AFTER = 2.0


class StoreLockedError(UsageError):
    """Another process has held a store's lock for longer than the timeout."""


class StoreLock:
    """A file lock that records its holder (pid, host, since when) beside it."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        from filelock import FileLock

        self.path = path
        self.owner = path.with_name(path.name + ".owner")
        self.timeout = timeout if timeout is not None else _lock_timeout()
        self._lock = FileLock(str(path))

    def holder(self) -> str:
        try:
            info = read_json(self.owner)
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self, timeout: float | None = None) -> None:
        from filelock import Timeout

        limit = self.timeout if timeout is None else timeout
        try:
            self._lock.acquire(timeout=min(limit, LOCK_NOTICE_AFTER))
        except Timeout:
            if limit <= LOCK_NOTICE_AFTER:
                raise StoreLockedError(self._refusal(limit)) from None
            warnings.warn(
                f"waiting for {self.path}, held by {self.holder()} (giving up after "
                f"{limit:g} s; MLISCAN_LOCK_TIMEOUT sets it)",
                stacklevel=2,
            )
            try:
                self._lock.acquire(timeout=limit - LOCK_NOTICE_AFTER)
            except Timeout:
                raise StoreLockedError(self._refusal(limit)) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with contextlib.suppress(OSError):  # a courtesy: the OS lock is what excludes
            atomic_write_json(self.owner, info)

    def _refusal(self, limit: float) -> str:
        return (
            f"{self.path} is held by {self.holder()} and was not released within {limit:g} s; "
            "wait for that process, or stop it (a killed holder releases the lock), then rerun"
        )

    def release(self) -> None:
        self.owner.unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_timeout() -> float:
    return env_value("MLISCAN_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT)
