"""The loss plane through three checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mliscan.plane import make_plane
from mliscan.spec import DataSpec
from mliscan.train import TrainSpec, train
from tests.conftest import run_cli


def test_gram_schmidt_coordinates() -> None:
    a = {"w": torch.tensor([0.0, 0.0, 0.0])}
    b = {"w": torch.tensor([3.0, 0.0, 0.0])}
    c = {"w": torch.tensor([1.0, 2.0, 0.0])}
    p = make_plane(a, b, c, ["w"])
    assert p.coords == {"A": (0.0, 0.0), "B": (3.0, 0.0), "C": (1.0, 2.0)}
    torch.testing.assert_close(p.point(1.0, 2.0)["w"], c["w"])


def test_five_by_five_plane_matches_direct_evaluation(tmp_path: Path, capsys) -> None:
    for seed in range(2):
        train(
            TrainSpec(
                arch_options={"hidden": "16", "bn": True},
                data=DataSpec("digits", limit=200),
                epochs=2,
                batch_size=50,
                seed=seed,
            ),
            tmp_path / f"r{seed}",
        )
    a, b, c = (
        tmp_path / "r0" / "init.safetensors",
        tmp_path / "r0" / "final.safetensors",
        tmp_path / "r1" / "init.safetensors",
    )
    out = tmp_path / "plane"
    code, _stdout, err = run_cli(
        ["plane", a, b, c, "--resolution", "5", "--out", out, "-q", "--plot", tmp_path / "p.png"],
        capsys,
    )
    assert code == 0, err
    grid = pl.read_parquet(out / "plane.parquet")
    assert grid.height == 25 and np.isfinite(grid["loss"].to_numpy()).all()
    meta = json.loads((out / "plane.json").read_text())
    # direct evaluation of the three checkpoints (alpha 0 and 1 of compare paths)
    direct = {}
    for name, (x, y) in (("A", (a, b)), ("B", (b, a)), ("C", (c, a))):
        code, o, _ = run_cli(
            ["compare", x, y, "--alphas", "2", "--no-gauss", "-q", "--json", "-"], capsys
        )
        direct[name] = json.loads(o)["loss"][0]
    for name in "ABC":
        assert meta["anchor_loss"][name] == pytest.approx(direct[name], rel=1e-5)
    assert (tmp_path / "p.png").stat().st_size > 10_000
    # a rerun finds every point in the store
    code, _, _ = run_cli(["plane", a, b, c, "--resolution", "5", "--out", out, "-q"], capsys)
    assert code == 0
    assert pl.read_parquet(out / "plane.parquet").equals(grid)
