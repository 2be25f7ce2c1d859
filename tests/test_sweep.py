"""Sweeps: cartesian products, stable hashed run folders, resumable after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mliscan.errors import UsageError
from mliscan.spec import DataSpec
from mliscan.sweep import expand, is_complete, parse_onoff, parse_seeds, run_name
from mliscan.train import TrainSpec, train
from tests.conftest import run_cli


def test_parsers_and_expansion() -> None:
    assert parse_seeds("0-2") == [0, 1, 2] and parse_seeds("0-1,5") == [0, 1, 5]
    assert parse_onoff("on,off") == [True, False]
    with pytest.raises(UsageError):
        parse_seeds("a-b")
    specs = expand(
        TrainSpec(),
        {
            "optimizer": ["sgd", "adam"],
            "lr": [0.1, 1.0],
            "arch_options.bn": [True, False],
            "seed": [0, 1, 2],
        },
    )
    assert len(specs) == 24 and len({run_name(s) for s in specs}) == 24
    assert {s.arch_options["bn"] for s in specs} == {True, False}


def test_run_names_are_stable() -> None:
    spec = TrainSpec(optimizer="adam", lr=0.01, seed=3)
    assert run_name(spec) == run_name(TrainSpec(optimizer="adam", lr=0.01, seed=3, device="cuda"))
    # a field left at its default does not enter the name: adding options keeps old names
    assert run_name(spec) == run_name(TrainSpec(optimizer="adam", lr=0.01, seed=3, until_loss=None))
    assert run_name(spec) != run_name(TrainSpec(optimizer="adam", lr=0.01, seed=4))


def _sweep_cmd(out: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mliscan.cli.app",
        "train",
        "--out",
        str(out),
        "--optimizer",
        "sgd,adam",
        "--bn",
        "on,off",
        "--lr",
        "0.05",
        "--hidden",
        "32",
        "--epochs",
        str(epochs),
        "--data-limit",
        "600",
        "--batch-size",
        "16",
    ]


def test_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        _sweep_cmd(out, 40),
        env={**os.environ, "MLISCAN_PAUSE_AFTER": "1"},  # pause once the first run is done
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out / ".paused").exists():
        assert proc.poll() is None, "the sweep ended before its pause point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [f.parent for f in out.glob("*/run.json")]
    assert len(finished) == 1
    stamps = {f: (f / "run.json").stat().st_mtime_ns for f in finished}
    unfinished = [d for d in out.iterdir() if d.is_dir() and d not in finished]
    for d in unfinished:  # the run in flight never looks complete
        assert not (d / "final.safetensors").exists() or not (d / "run.json").exists()
        assert not is_complete(d)
    p = subprocess.run(_sweep_cmd(out, 40), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert f"({len(finished)} were already done)" in p.stderr
    runs = [d for d in out.iterdir() if d.is_dir()]
    assert len(runs) == 4 and all(is_complete(d) for d in runs)
    for f, stamp in stamps.items():
        assert (f / "run.json").stat().st_mtime_ns == stamp  # not redone


def test_until_loss_and_optimizer_switch(tmp_path: Path) -> None:
    base = dict(
        arch_options={"hidden": "32"}, data=DataSpec("digits", limit=300), batch_size=32, lr=0.05
    )
    rec = train(TrainSpec(**base, epochs=200, until_loss=0.5), tmp_path / "a")
    assert rec["stopped_at_epoch"] is not None and rec["stopped_at_epoch"] < 200
    assert rec["history"][-1]["loss"] < 0.5 <= rec["history"][-2]["loss"]
    assert all("distance" in h for h in rec["history"])
    assert rec["history"][-1]["distance"] > rec["history"][0]["distance"] > 0
    rec = train(TrainSpec(**base, epochs=4, switch_optimizer="adam", switch_at=2), tmp_path / "b")
    assert rec["config"]["switch_optimizer"] == "adam" and len(rec["history"]) == 4
    with pytest.raises(UsageError):
        train(TrainSpec(**base, epochs=1, switch_optimizer="adam"), tmp_path / "c")


def test_single_run_cli_keeps_its_folder(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(
        ["train", "--out", tmp_path / "one", "--hidden", "8", "--epochs", "1", "--bn", "-q"], capsys
    )
    assert code == 0, err
    assert json.loads((tmp_path / "one" / "run.json").read_text())["config"]["arch_options"] == {
        "hidden": "8",
        "bn": True,
    }
