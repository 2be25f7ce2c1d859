from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import torch

from mliscan.cli.app import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_subprocess(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLISCAN_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "mliscan.cli.app", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=kw.pop("timeout", 300),
        **kw,
    )


class TrainedRun(Protocol):
    def __call__(self, name: str = "run", copy_to: Path | None = None, **fields: Any) -> Path: ...


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under a folder with its size and modification time."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedRun]:
    """The one way a test gets a finished training run (init.safetensors, final.safetensors,
    run.json): ``trained_run(name, copy_to=None, **TrainSpec fields)`` trains once per distinct
    setting in the session and returns the run folder (``<basetemp>/<name>N``; the first request
    of a setting names it). The folder is shared, hence read-only: a test that writes into a
    run (report's metrics cache, retraining in place) passes ``copy_to`` and gets its own copy
    there. At the end of the session every shared run is checked to be as it was trained."""
    from mliscan.train import TrainSpec, train

    runs: dict[str, Path] = {}
    trained: dict[Path, dict[str, tuple[int, int]]] = {}

    def get(name: str = "run", copy_to: Path | None = None, **fields: Any) -> Path:
        key = repr(TrainSpec(**fields))
        if key not in runs:
            out = tmp_path_factory.mktemp(name)
            train(TrainSpec(**fields), out)
            runs[key] = out
            trained[out] = _listing(out)
        if copy_to is None:
            return runs[key]
        shutil.copytree(runs[key], copy_to, dirs_exist_ok=True)
        return copy_to

    yield get
    changed = []
    for folder, files in trained.items():
        now = _listing(folder)
        names = sorted(n for n in files.keys() | now.keys() if files.get(n) != now.get(n))
        if names:
            changed.append(f"{folder} ({', '.join(names)})")
    assert not changed, (
        f"a test changed a shared trained run: {'; '.join(changed)} "
        "(ask trained_run(..., copy_to=...) for a copy to change)"
    )


@pytest.fixture(scope="session")
def mlp_pair(trained_run: TrainedRun) -> Path:
    """A trained digits MLP (no BN): init.safetensors / final.safetensors / run.json."""
    from mliscan.spec import DataSpec

    return trained_run(
        "mlp_pair",
        arch_options={"hidden": "32,32"},
        data=DataSpec("digits", limit=400),
        epochs=5,
        batch_size=64,
        lr=0.1,
    )


@pytest.fixture(scope="session")
def mlp_bn_pair(trained_run: TrainedRun) -> Path:
    from mliscan.spec import DataSpec

    return trained_run(
        "mlp_bn_pair",
        arch_options={"hidden": "32,32", "bn": True},
        data=DataSpec("digits", limit=400),
        optimizer="adam",
        lr=0.05,
        epochs=5,
        batch_size=64,
    )


def plain_mlp_state(seed: int, hidden: int = 16) -> dict[str, torch.Tensor]:
    """A hand-written Sequential MLP's state dict (as a user's own script would save it)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
