"""One record per path: the JSON object and the Parquet row agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mliscan.evaluate import Curve
from mliscan.results import PATH_SCHEMA, PathResult, is_complete, metrics_of
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
