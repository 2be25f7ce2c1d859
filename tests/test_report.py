"""`mliscan report`: hand-computed proportions, the power-law fit, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mliscan import reporting as rp
from mliscan.spec import DataSpec, EvalSpec
from tests.conftest import TrainedRun, run_cli


def test_power_law_fit_recovers_the_exponent() -> None:
    x = np.linspace(0.5, 20, 40)
    fit = rp.power_law_fit(x, 3.0 * x**0.7)
    assert fit["slope"] == pytest.approx(0.7) and fit["prefactor"] == pytest.approx(3.0)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = 3.0 * x**0.7 * np.exp(np.random.default_rng(0).normal(0, 0.05, x.size))
    assert rp.power_law_fit(x, noisy)["slope"] == pytest.approx(0.7, abs=0.05)


def _fake_run(
    root: Path, name: str, optimizer: str, bn: bool, lr: float, loss: float, min_delta: float
) -> Path:
    """A run folder with a cached metrics file, so the table logic is tested by hand."""
    d = root / name
    d.mkdir(parents=True)
    (d / "init.safetensors").write_bytes(b"")
    (d / "final.safetensors").write_bytes(b"")
    cfg = {
        "arch": "mlp",
        "optimizer": optimizer,
        "lr": lr,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "epochs": 1,
        "batch_size": 1,
        "seed": 0,
        "data": {"name": "digits"},
        "arch_options": {"bn": bn},
    }
    (d / "run.json").write_text(
        json.dumps(
            {
                "config": cfg,
                "arch_options": {"bn": bn},
                "final_train_loss": loss,
                "final_train_accuracy": 1.0,
            }
        )
    )
    metrics = {
        "min_delta": min_delta,
        "distance": 1.0,
        "normalized_distance": 1.0 + lr,
        "gauss_length": 0.5 + lr,
        "barrier": 0.0,
        "alphas": [0.0, 0.5, 1.0],
        "loss": [2.3, loss + min_delta + 0.1, loss],
        "loss_init": 2.3,
        "loss_final": loss,
        "accuracy_final": 1.0,
    }
    (d / f"mli-{rp.cache_key(d, EvalSpec())}.json").write_text(json.dumps(metrics))
    return d


def test_tables_match_hand_counts(tmp_path: Path, capsys) -> None:
    # adam+bn lr 0.1: 3 converged, 2 non-monotonic (min-Delta > 1e-3), 1 unconverged non-monotonic
    _fake_run(tmp_path, "a", "adam", True, 0.1, 0.01, 0.2)
    _fake_run(tmp_path, "b", "adam", True, 0.1, 0.02, 0.4)
    _fake_run(tmp_path, "c", "adam", True, 0.1, 0.05, 0.0005)  # below the tolerance: monotonic
    _fake_run(tmp_path, "d", "adam", True, 0.1, 0.50, 0.9)  # not converged: not counted
    _fake_run(tmp_path, "e", "sgd", False, 0.01, 0.03, 0.0)
    code, out, err = run_cli(
        ["report", tmp_path, "--out", tmp_path / "rep", "-q", "--group-by", "optimizer"], capsys
    )
    assert code == 0, err
    t1 = pl.read_csv(tmp_path / "rep" / "table1.csv")
    adam = t1.filter(pl.col("optimizer") == "adam").row(0, named=True)
    assert (adam["runs"], adam["converged"], adam["non_monotonic"]) == (4, 3, 2)
    assert adam["proportion"] == pytest.approx(2 / 3)
    assert adam["mean_min_delta_nonmonotonic"] == pytest.approx(0.3)
    t2 = pl.read_csv(tmp_path / "rep" / "table2.csv")
    assert set(t2["scheme"]) == {"BN", "NBN"}
    runs = pl.read_parquet(tmp_path / "rep" / "runs.parquet")
    assert runs.height == 5 and {
        "optimizer",
        "lr",
        "bn",
        "min_delta",
        "gauss_length",
        "monotonic",
    } <= set(runs.columns)
    assert "Table 1 form" in out and "R^2" in out
    assert (tmp_path / "rep" / "grouped.md").exists()
    code, _, err = run_cli(
        ["report", tmp_path, "--out", tmp_path / "rep", "-q", "--group-by", "nope"], capsys
    )
    assert code == 2 and "nope" in err


def test_metrics_are_computed_once_and_cached(trained_run: TrainedRun, tmp_path: Path) -> None:
    trained_run(
        "report",
        copy_to=tmp_path / "r",
        arch_options={"hidden": "8"},
        data=DataSpec("digits", limit=100),
        epochs=1,
        batch_size=50,
    )
    spec = EvalSpec(alphas=5)
    first = rp.run_metrics(tmp_path / "r", spec)
    cache = list((tmp_path / "r").glob("mli-*.json"))
    assert len(cache) == 1
    assert rp.run_metrics(tmp_path / "r", spec) == first
    rp.run_metrics(tmp_path / "r", EvalSpec(alphas=6))  # other settings, another cache file
    assert len(list((tmp_path / "r").glob("mli-*.json"))) == 2


def test_figures_and_self_contained_html(tmp_path: Path, capsys) -> None:
    for i, (opt, bn, lr, delta) in enumerate(
        [("adam", True, 0.1, 0.2), ("sgd", False, 0.01, 0.0), ("sgd", True, 0.3, 0.0)]
    ):
        _fake_run(tmp_path / "runs", f"r{i}", opt, bn, lr, 0.01, delta)
    out = tmp_path / "rep"
    code, _, err = run_cli(
        ["report", tmp_path / "runs", "--out", out, "-q", "--html", out / "sweep.html"], capsys
    )
    assert code == 0, err
    for name in ("curves", "delta_scatter", "power_law"):
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert "<svg" in svg.read_text()
    fit = pl.read_csv(out / "powerlaw.csv").row(0, named=True)
    assert fit["points"] == 3 and 0 <= fit["r2"] <= 1
    page = (out / "sweep.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "Table 1 form" in page and "<table>" in page and "power-law" in page
    assert "src='http" not in page and "<link" not in page  # nothing fetched from elsewhere


def test_no_converged_run_is_said_and_figures_agree_with_the_tables(tmp_path: Path, capsys):
    """Runs above the loss threshold are left out of the tables: the report says so when
    that is every run, and the figures draw them grey (not red/blue as counted runs); the
    HTML page carries its date, version, settings and every run."""
    for i, delta in enumerate((0.2, 0.0)):
        _fake_run(tmp_path / "runs", f"r{i}", "sgd", False, 0.1, 0.5, delta)
    out = tmp_path / "rep"
    args = ["report", tmp_path / "runs", "--out", out, "-q", "--html", out / "r.html"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "no run converged" in err and "below 0.1, and none of the 2 is; the lowest is 0.5" in err
    for name in ("curves", "delta_scatter"):
        svg = (out / f"{name}.svg").read_text()
        assert "#d62728" not in svg and "#1f77b4" not in svg and "#b2b2b2" in svg, name
    page = (out / "r.html").read_text()
    from mliscan import __version__

    assert f" UTC by mliscan {__version__}." in page
    assert "loss threshold (converged below)" in page and "Runs (2)" in page
    assert "<td>r0</td>" in page and "<td>False</td>" in page and "no run converged" in page
    code, _, err = run_cli([*args, "--loss-threshold", "1"], capsys)  # now both count
    assert code == 0 and "no run converged" not in err
    assert "#d62728" in (out / "curves.svg").read_text()
