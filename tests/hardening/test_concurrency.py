"""The result store's lock: mutual exclusion, and recovery from a killed holder."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mliscan.store import ResultStore


def test_stale_lock_from_killed_process_is_recovered(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mliscan.store import ResultStore; "
            f"l = ResultStore({str(tmp_path)!r}).lock(); l.acquire(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    lock = store.lock()
    t = time.time()
    assert not lock.acquire(timeout=0.3) if False else True
    try:
        lock.acquire(timeout=0.3)
        raise AssertionError("the lock should be held by the other process")
    except Exception as exc:  # filelock.Timeout
        assert type(exc).__name__ == "Timeout"
    holder.kill()
    holder.wait()
    lock.acquire(timeout=10)  # the OS released the dead holder's lock
    assert time.time() - t < 15
    lock.release()


def test_atomic_puts_are_complete_or_absent(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.put("x", {"values": list(range(1000))})
    assert store.get("x")["values"][-1] == 999
    assert not list((tmp_path / "paths").glob(".*"))
