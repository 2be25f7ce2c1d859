"""Figure 3: logit trajectories and their PCA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mliscan.logitpca import pca2, pick_examples
from tests.conftest import run_cli


def test_pca_of_a_planar_curve_keeps_its_geometry() -> None:
    t = np.linspace(0, np.pi, 30)
    plane = np.stack([3 * np.cos(t), np.sin(t)], axis=1)  # an ellipse arc
    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 2)))
    z = (plane @ basis.T + 7.0)[:, None, :]  # [A=30, E=1, D=5], offset from the origin
    points, explained = pca2(z)
    assert explained.sum() == pytest.approx(1.0) and explained[0] > explained[1]
    d_orig = np.linalg.norm(np.diff(z[:, 0], axis=0), axis=1)
    d_proj = np.linalg.norm(np.diff(points[:, 0], axis=0), axis=1)
    np.testing.assert_allclose(d_proj, d_orig, rtol=1e-9)  # the plane is kept exactly


def test_examples_are_balanced_over_classes() -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 1])
    assert pick_examples(labels, 5) == [0, 3, 4, 1, 6]
    assert sorted(pick_examples(labels, 100)) == list(range(7))


def test_logits_command_writes_figure_and_json(mlp_pair: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(
        [
            "logits",
            mlp_pair / "init.safetensors",
            mlp_pair / "final.safetensors",
            "--examples",
            "6",
            "--alphas",
            "5",
            "--out",
            tmp_path / "fig3",
            "--json",
            "-",
        ],
        capsys,
    )
    assert code == 0, err
    rec = json.loads(out)
    assert len(rec["examples"]) == 6 and len(set(rec["labels"])) == 6
    assert np.asarray(rec["points"]).shape == (5, 6, 2)
    assert (tmp_path / "fig3.png").stat().st_size > 5000 and (tmp_path / "fig3.svg").exists()
