"""The loss plane through three checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mliscan.planes import make_plane
from mliscan.spec import DataSpec
from tests.conftest import TrainedRun, run_cli


def test_gram_schmidt_coordinates() -> None:
    a = {"w": torch.tensor([0.0, 0.0, 0.0])}
    b = {"w": torch.tensor([3.0, 0.0, 0.0])}
    c = {"w": torch.tensor([1.0, 2.0, 0.0])}
    p = make_plane(a, b, c, ["w"])
    assert p.coords == {"A": (0.0, 0.0), "B": (3.0, 0.0), "C": (1.0, 2.0)}
    torch.testing.assert_close(p.point(1.0, 2.0)["w"], c["w"])


@pytest.fixture(scope="module")
def three_points(trained_run: TrainedRun) -> tuple[Path, Path, Path]:
    """A (run 0's init), B (its final), C (run 1's init): two short digits BN MLP runs."""
    r0, r1 = (
        trained_run(
            "plane-run",
            arch_options={"hidden": "16", "bn": True},
            data=DataSpec("digits", limit=200),
            epochs=2,
            batch_size=50,
            seed=seed,
        )
        for seed in range(2)
    )
    return r0 / "init.safetensors", r0 / "final.safetensors", r1 / "init.safetensors"


def test_five_by_five_plane_matches_direct_evaluation(
    three_points: tuple[Path, Path, Path], tmp_path: Path, capsys
) -> None:
    a, b, c = three_points
    out = tmp_path / "plane"
    code, _stdout, err = run_cli(
        ["plane", a, b, c, "--resolution", "5", "--out", out, "-q", "--plot", tmp_path / "p.png"],
        capsys,
    )
    assert code == 0, err
    grid = pl.read_parquet(out / "plane.parquet")
    assert grid.height == 25 and np.isfinite(grid["loss"].to_numpy()).all()
    assert json.loads((out / "plane.json").read_text())["anchor_loss"].keys() == {"A", "B", "C"}
    assert (tmp_path / "p.png").stat().st_size > 10_000
    # a rerun finds every point in the store
    code, _, _ = run_cli(["plane", a, b, c, "--resolution", "5", "--out", out, "-q"], capsys)
    assert code == 0
    assert pl.read_parquet(out / "plane.parquet").equals(grid)


def _reference_loss(state: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    """Written here, in float64: the digits MLP at ``state`` with each BN layer's statistics
    those of its input over all of x (population variance), then the eval-mode loss."""
    from mliscan.adapter import DataInfo
    from mliscan.registry import get_adapter

    adapter = get_adapter("mlp")
    net = adapter.build(
        adapter.parse_options({"hidden": "16", "bn": True}), DataInfo((1, 8, 8), 10)
    )
    net = net.double()
    net.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    net.eval()
    for bn in bns:
        bn.train()
        bn.momentum = 1.0  # the running buffers take this batch's mean and unbiased variance
    with torch.no_grad():
        net(x)
    n = x.shape[0]
    for bn in bns:
        bn.running_var.mul_((n - 1) / n)  # population variance
        bn.eval()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(net(x), y))


def test_plane_points_on_the_a_b_axis_against_an_independent_loop(
    three_points: tuple[Path, Path, Path], tmp_path: Path, capsys
) -> None:
    """Points with y = 0 lie on the segment A -> B: their loss is the model's at
    A + (x / |B - A|) (B - A), computed here without mliscan's engine."""
    from safetensors.torch import load_file
    from sklearn.datasets import load_digits

    a, b, c = three_points
    sa, sb = load_file(str(a)), load_file(str(b))
    moving = [k for k, v in sa.items() if v.is_floating_point() and "running_" not in k]
    length = float(sum(((sb[k].double() - sa[k].double()) ** 2).sum() for k in moving)) ** 0.5
    out = tmp_path / "plane"
    bounds = f"0,{length},-1,1"
    code, _, err = run_cli(
        ["plane", a, b, c, "--resolution", "5", "--range", bounds, "--out", out, "-q"], capsys
    )
    assert code == 0, err
    rows = pl.read_parquet(out / "plane.parquet").filter(pl.col("y").abs() < 1e-12)
    assert rows.height == 5
    digits = load_digits()
    x = torch.tensor(digits.data[:200] / 16.0, dtype=torch.float64)  # the MLP takes 64 pixels
    y = torch.tensor(digits.target[:200])
    for px, loss in zip(rows["x"].to_list(), rows["loss"].to_list(), strict=True):
        t = px / length
        state = {
            k: sa[k].double() + t * (sb[k].double() - sa[k].double()) if k in moving else sa[k]
            for k in sa
        }
        assert loss == pytest.approx(_reference_loss(state, x, y), rel=2e-5), px
