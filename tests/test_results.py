"""One record per path: the JSON object and the Parquet row agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mliscan.evaluate import Curve
from mliscan.record import Note, PathRecord
from mliscan.results import (
    PATH_SCHEMA,
    PathResult,
    curve_rows,
    is_complete,
    metrics_of,
    path_row,
)
from mliscan.spec import EvalSpec


def _result(loss, tol=0.0, gauss=None) -> PathResult:
    alphas = np.linspace(0, 1, len(loss))
    g = None if gauss is None else np.asarray(gauss, dtype=float)
    curve = Curve(alphas, np.asarray(loss, dtype=float), np.linspace(0.1, 0.9, len(loss)), g)
    return PathResult("i", "f", "mlp", {}, {}, EvalSpec(), curve, 2.0, 0.5, tolerance=tol)


def test_json_and_row_hold_the_same_numbers():
    r = _result([0.78, 0.40, 0.70], gauss=[1.0, 1.0, 1.0])
    d = r.to_dict()
    row = r.to_row(path_id="p", family="init-optimum", a="i", b="f", own_pair=True)
    assert set(row) == set(PATH_SCHEMA)
    assert d["min_delta"] == pytest.approx(0.30) == row["min_delta"]
    for key in ("monotonic", "barrier", "distance", "normalized_distance", "gauss_length"):
        assert d[key] == row[key], key
    assert d["gauss_length"] == pytest.approx(1.0)
    assert d["loss_init"] == row["loss_a"] and d["loss_final"] == row["loss_b"]
    json.dumps(d)  # plain JSON


def test_tolerance_is_the_one_rule():
    assert _result([1.0, 1.05, 0.5], tol=0.0).monotonic is False
    assert _result([1.0, 1.05, 0.5], tol=0.1).monotonic is True
    assert metrics_of(_result([1.0, 1.05, 0.5]).stored(), 0.1)["monotonic"] is True


def test_nonfinite_losses_are_null_and_undefined():
    d = _result([1.0, float("nan"), 0.5]).to_dict()
    assert d["loss"][1] is None and d["min_delta"] is None and d["monotonic"] is None


def test_is_complete():
    good = _result([1.0, 0.5]).stored()
    assert is_complete(good)
    assert not is_complete({**good, "loss": [1.0]})
    assert not is_complete({k: v for k, v in good.items() if k != "distance"})
    assert not is_complete({**good, "loss": ["x", 1.0]})
    assert not is_complete([good])


def test_the_record_holds_the_json_numbers():
    """PathResult.record() gives the --json object, and its metrics are the result's."""
    for loss in ([0.78, 0.40, 0.70], [1.0, float("nan"), 0.5], [1.0, float("inf"), 0.5]):
        r = _result(loss, tol=0.05, gauss=[1.0, 2.0, 1.0])
        rec, d = r.record(), r.to_dict()
        assert rec.to_json() == d
        for key in ("min_delta", "monotonic", "barrier", "gauss_length", "loss_init"):
            assert getattr(rec, key) == d[key], key
        assert rec.nonfinite_alphas == d["nonfinite_alphas"]
        assert metrics_of(r.stored(), 0.05) == {k: d[k] for k in metrics_of(r.stored(), 0.05)}


def test_notes_keep_their_kind_in_the_json():
    r = _result([1.0, 0.5])
    r.notes = [Note("swapped", "the endpoints look swapped"), Note("identical", "one point")]
    d = r.to_dict()
    assert d["notes"] == ["the endpoints look swapped", "one point"]
    assert d["note_kinds"] == ["swapped", "identical"]
    assert PathRecord.from_json(json.loads(json.dumps(d))).notes == tuple(r.notes)


def test_a_stored_record_gives_the_rows_of_its_result():
    r = _result([0.78, 0.40, 0.70], gauss=[1.0, 1.0, 1.0])
    labels = {"path_id": "p", "family": "init-init", "a": "i", "b": "f", "own_pair": None}
    stored = json.loads(json.dumps({**r.stored(), **labels}))
    assert path_row(stored, r.tolerance) == r.to_row(**labels)
    assert curve_rows(stored) == r._curve_record().replace(**labels).curve_rows()
