"""Gates read a path's typed record: thresholds, the JUnit report and the summary."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from mliscan import gates
from mliscan.record import PathRecord
from mliscan.spec import GateSpec


def _record(loss: tuple[float | None, ...], tolerance: float = 0.0) -> PathRecord:
    return PathRecord(
        alphas=(0.0, 0.5, 1.0),
        loss=loss,
        accuracy=(0.1, 0.5, 0.9),
        gauss_integrand=None,
        distance=2.0,
        normalized_distance=0.5,
        tolerance=tolerance,
        init="i.safetensors",
        final="f.safetensors",
        arch="mlp",
        data={"name": "digits", "examples": 3},
    )


def test_thresholds_against_the_record():
    gate = GateSpec(require_monotonic=True, max_delta=0.5, min_final_accuracy=0.95)
    checks = {c.name: c for c in gates.evaluate(_record((0.78, 0.40, 0.70), 0.1), gate)}
    assert checks["require_monotonic"].passed is False
    assert checks["require_monotonic"].allowed == "<= 0.1"
    assert checks["max_delta"].passed and abs(checks["max_delta"].observed - 0.30) < 1e-12
    assert checks["min_final_accuracy"].passed is False
    assert checks["min_final_accuracy"].observed == 0.9


def test_an_undefined_value_fails():
    checks = gates.evaluate(_record((1.0, None, 0.5)), GateSpec(max_delta=1.0, max_barrier=1.0))
    assert [c.passed for c in checks] == [False, False]
    assert [c.observed for c in checks] == [None, None]


def test_junit_and_summary_name_the_path(tmp_path: Path):
    record = _record((1.0, 0.7, 0.5))
    checks = gates.evaluate(record, GateSpec(require_monotonic=True))
    gates.write_junit(tmp_path / "mli.xml", checks, record, 1.0)
    suite = ET.parse(tmp_path / "mli.xml").getroot()
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["init"] == "i.safetensors" and props["monotonic"] == "True"
    assert props["gauss_length"] == "undefined"
    text = gates.markdown_summary(checks, record, "▇▄▁")
    assert "`i.safetensors` → `f.safetensors` (mlp, digits, 3 alphas)" in text
    assert "✅ passed" in text
