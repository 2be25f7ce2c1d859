from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="session")
def mlp_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained digits MLP (no BN): init.safetensors / final.safetensors / run.json."""
    from mliscan.spec import DataSpec
    from mliscan.train import TrainSpec, train

    out = tmp_path_factory.mktemp("mlp_pair")
    train(
        TrainSpec(
            arch_options={"hidden": "32,32"},
            data=DataSpec("digits", limit=400),
            epochs=5,
            batch_size=64,
            lr=0.1,
        ),
        out,
    )
    return out


@pytest.fixture(scope="session")
def mlp_bn_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mliscan.spec import DataSpec
    from mliscan.train import TrainSpec, train

    out = tmp_path_factory.mktemp("mlp_bn_pair")
    train(
        TrainSpec(
            arch_options={"hidden": "32,32", "bn": True},
            data=DataSpec("digits", limit=400),
            optimizer="adam",
            lr=0.05,
            epochs=5,
            batch_size=64,
        ),
        out,
    )
    return out


def plain_mlp_state(seed: int, hidden: int = 16) -> dict[str, torch.Tensor]:
    """A hand-written Sequential MLP's state dict (as a user's own script would save it)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
