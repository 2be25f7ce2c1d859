"""One identity for results: content, numeric settings and the numeric code's version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mliscan import identity, reporting
from mliscan.spec import BNSpec, DataSpec, EvalSpec
from mliscan.store import ResultStore
from mliscan.train import TrainSpec, train
from tests.conftest import TrainedRun


def test_key_depends_on_content_settings_and_version(monkeypatch):
    base = identity.key("path", ["a", "b"], {"x": 1})
    assert base == identity.key("path", ["a", "b"], {"x": 1})
    assert base != identity.key("path", ["b", "a"], {"x": 1})
    assert base != identity.key("path", ["a", "c"], {"x": 1})
    assert base != identity.key("path", ["a", "b"], {"x": 2})
    assert base != identity.key("plane-point", ["a", "b"], {"x": 1})
    monkeypatch.setattr(identity, "NUMERIC_VERSION", identity.NUMERIC_VERSION + 1)
    assert base != identity.key("path", ["a", "b"], {"x": 1})


def test_file_hash(tmp_path: Path):
    (tmp_path / "a").write_bytes(b"abc")
    assert identity.file_hash(tmp_path / "a") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_store_heals_corrupt_and_partial_entries(tmp_path: Path):
    store = ResultStore(tmp_path, valid=lambda r: "loss" in r)
    store.put("k1", {"loss": [1.0]})
    assert store.load("k1")["loss"] == [1.0]
    (tmp_path / "paths" / "k2.json").write_text('{"loss": [1.0')  # cut short
    (tmp_path / "paths" / "k3.json").write_text('{"other": 1}')  # partial
    (tmp_path / "paths" / "k4.json").write_text(json.dumps({"loss": [1], "key": "k5"}))  # moved
    for k in ("k2", "k3", "k4"):
        with pytest.warns(UserWarning, match="recomputed"):
            assert store.load(k) is None
    assert store.load("absent") is None
    assert [r["loss"] for r in store.records(["k1", "k2"])] == [[1.0]]


def test_report_recomputes_a_run_retrained_in_place(trained_run: TrainedRun, tmp_path: Path):
    """The stale-cache defect: after retraining a run in place, report must not reuse the old
    metrics (their key holds the files' contents)."""
    run = tmp_path / "r"
    spec = EvalSpec(alphas=4, gauss=False)
    trained_run(copy_to=run, arch_options={"hidden": "8"}, epochs=1, batch_size=50, lr=0.05)
    first = reporting.run_metrics(run, spec)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    (run / "run.json").unlink()
    train(TrainSpec(arch_options={"hidden": "8"}, epochs=3, batch_size=50, lr=0.5), run)
    second = reporting.run_metrics(run, spec)
    assert second["distance"] != first["distance"]
    fresh = reporting.compare_pair(
        str(run / "init.safetensors"), str(run / "final.safetensors"), spec=spec
    )
    assert second["distance"] == pytest.approx(fresh.distance, rel=1e-12)
    # other settings, another entry; the same settings, the cached one
    assert reporting.cache_key(run, spec) != reporting.cache_key(
        run, EvalSpec(alphas=5, gauss=False)
    )
    assert reporting.cache_key(run, spec) != reporting.cache_key(
        run, EvalSpec(alphas=4, gauss=False, bn=BNSpec(batch_size=64))
    )
    assert reporting.run_metrics(run, spec) == second


def test_report_recomputes_a_corrupt_cache(trained_run: TrainedRun, tmp_path: Path):
    run = tmp_path / "r"
    spec = EvalSpec(alphas=3, gauss=False)
    # the run of test_report's cache test (one training for both)
    trained_run(
        "report",
        copy_to=run,
        arch_options={"hidden": "8"},
        data=DataSpec("digits", limit=100),
        epochs=1,
        batch_size=50,
    )
    good = reporting.run_metrics(run, spec)
    cache = run / f"mli-{reporting.cache_key(run, spec)}.json"
    cache.write_text("{not json")
    with pytest.warns(UserWarning, match="recomputed"):
        assert reporting.run_metrics(run, spec) == good
