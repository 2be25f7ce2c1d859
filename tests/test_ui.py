"""The terminal tables read a path's typed record (or, from older callers, its dict)."""

from __future__ import annotations

from rich.console import Console

from mliscan.cli import ui
from mliscan.record import PathRecord


def _text(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def _record(**changes) -> PathRecord:
    record = PathRecord(
        alphas=(0.0, 0.5, 1.0),
        loss=(1.0, 1.2, 0.5),
        accuracy=None,
        gauss_integrand=None,
        distance=2.0,
        normalized_distance=0.5,
        tolerance=0.1,
        init="i.safetensors",
        final="f.safetensors",
        arch="mlp",
        data={"name": "digits", "examples": 3},
        bn={"mode": "exact", "batch_size": "all"},
        label="run0",
    )
    return record.replace(**changes)


def test_result_table():
    text = _text(ui.result_table(_record()))
    assert "MLI: run0" in text
    assert "NO (min-Δ > 0.1)" in text
    assert "0.2000" in text  # min-Δ
    assert "skipped" in text  # no Gauss integrand
    assert "mlp · digits (3 examples)" in text and "exact, whole data" in text


def test_results_table_takes_records_and_json_objects():
    rec = _record()
    for given in (rec, rec.to_json()):
        text = _text(ui.results_table([given]))
        assert "run0" in text and "NO" in text and "—" in text


def test_heatmap_judges_at_the_tolerance():
    ab = {"family": "init-optimum", "a": "i0", "b": "o0", "own_pair": True, "path_id": "p"}
    record = _record(**ab)
    strict = _text(ui.heatmap([record], "init-optimum", 0.1))
    loose = _text(ui.heatmap([record.to_stored()], "init-optimum", 0.5))
    assert "0.200 / " in strict and "*" in strict and "own pair" in strict
    row = {**ab, "min_delta": 0.2, "monotonic": False, "barrier": 0.45}  # paths.parquet
    assert "0.200 / 0.450*" in _text(ui.heatmap([row], "init-optimum", 0.1))
    assert ui._cell(record, 0.1).monotonic is False
    assert ui._cell(record.to_stored(), 0.5).monotonic is True
    assert "i0" in loose
