"""The result store's lock: mutual exclusion, who holds it, a timeout, a killed holder."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mliscan.store import ResultStore, StoreLockedError


def _holder(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mliscan.store import ResultStore; "
            f"l = ResultStore({str(root)!r}).lock(); l.acquire(); print('held', flush=True); "
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_names_its_holder_and_times_out(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    holder = _holder(tmp_path)
    try:
        lock = store.lock(timeout=0.3)
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid} on .* since "):
            lock.acquire()
        lock = store.lock(timeout=2.5)
        t = time.time()
        with (
            pytest.warns(UserWarning, match=rf"waiting for .*held by pid {holder.pid}"),
            pytest.raises(StoreLockedError, match=r"not released within 2\.5 s"),
        ):
            lock.acquire()
        assert 2.0 < time.time() - t < 10
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_from_killed_process_is_recovered(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    holder = _holder(tmp_path)
    holder.kill()
    holder.wait()
    t = time.time()
    with store.lock(timeout=10):  # the OS released the dead holder's lock
        assert (tmp_path / ".lock.owner").is_file()
    assert time.time() - t < 5
    assert not (tmp_path / ".lock.owner").exists()


def test_grid_waiting_on_a_stopped_holder_exits_2(tmp_path: Path, mlp_pair: Path) -> None:
    """A stopped process holding OUT/.lock: grid says who and gives up (exit 2)."""
    import os

    out = tmp_path / "g"
    out.mkdir()
    holder = _holder(out)
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "mliscan.cli.app",
                "grid",
                "--init",
                str(mlp_pair / "init.safetensors"),
                "--optimum",
                str(mlp_pair / "final.safetensors"),
                "--out",
                str(out),
                "--alphas",
                "3",
                "-q",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "MLISCAN_LOCK_TIMEOUT": "1"},
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 2, p.stderr
    assert f"pid {holder.pid}" in p.stderr and "Traceback" not in p.stderr


def test_atomic_puts_are_complete_or_absent(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.put("x", {"values": list(range(1000))})
    assert store.get("x")["values"][-1] == 999
    assert not list((tmp_path / "paths").glob(".*"))
