"""Thresholds on a pair result (its :class:`~mliscan.record.PathRecord`) for CI gates, and
their machine-readable reports.

A threshold whose observed value is undefined (NaN/Inf along the path) fails: a gate never
passes on a number it could not compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from mliscan.paths import atomic_write_text
from mliscan.record import PathRecord
from mliscan.spec import GateSpec

# (config/CLI name, the record's attribute, comparison, unit text)
THRESHOLDS = (
    ("max_delta", "min_delta", "<=", "min-Δ (largest rise of the loss)"),
    ("max_gauss_length", "gauss_length", "<=", "average Gauss length"),
    ("max_barrier", "barrier", "<=", "loss barrier"),
    ("min_final_accuracy", "accuracy_final", ">=", "final training accuracy"),
)


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    observed: Any
    allowed: str
    passed: bool


def evaluate(record: PathRecord, gate: GateSpec) -> list[Check]:
    """Every threshold of ``gate`` against a path's record (``PathResult.record()``)."""
    checks = []
    if gate.require_monotonic:
        checks.append(
            Check(
                "require_monotonic",
                f"monotonic path (min-Δ <= tolerance {record.tolerance:g})",
                record.min_delta,
                f"<= {record.tolerance:g}",
                record.monotonic is True,
            )
        )
    for name, attribute, op, text in THRESHOLDS:
        limit = getattr(gate, name)
        if limit is None:
            continue
        value = getattr(record, attribute)
        ok = (
            value is not None
            and math.isfinite(value)
            and (value <= limit if op == "<=" else value >= limit)
        )
        checks.append(Check(name, text, value, f"{op} {limit:g}", bool(ok)))
    return checks


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "undefined"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def write_junit(path: str | Path, checks: list[Check], record: PathRecord, seconds: float) -> None:
    """JUnit XML: one testsuite, one testcase per threshold (GitHub, GitLab, Jenkins read it)."""
    failures = sum(not c.passed for c in checks)
    suite = ET.Element(
        "testsuite",
        name="mliscan.check",
        tests=str(len(checks)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{seconds:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for key in ("init", "final", "arch", "min_delta", "monotonic", "barrier", "gauss_length"):
        ET.SubElement(props, "property", name=key, value=_fmt(getattr(record, key)))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname="mliscan.check", name=c.name, time="0")
        if not c.passed:
            f = ET.SubElement(
                case,
                "failure",
                message=f"{c.description}: observed {_fmt(c.observed)}, allowed {c.allowed}",
            )
            f.text = f"{c.name}: observed {_fmt(c.observed)}, allowed {c.allowed}"
    ET.indent(suite)
    atomic_write_text(path, ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")


def markdown_summary(checks: list[Check], record: PathRecord, sparkline: str) -> str:
    verdict = "✅ passed" if all(c.passed for c in checks) else "❌ failed"
    lines = [
        f"### mliscan check {verdict}",
        "",
        f"`{record.init}` → `{record.final}` ({record.arch}, {record.data['name']}, "
        f"{len(record.alphas)} alphas)",
        "",
        f"Loss along the path: `{sparkline}`",
        "",
        "| threshold | observed | allowed | result |",
        "| --- | --- | --- | --- |",
    ]
    for c in checks:
        lines.append(
            f"| {c.description} | {_fmt(c.observed)} | {c.allowed} | {'pass' if c.passed else '**FAIL**'} |"
        )
    return "\n".join(lines) + "\n"
