"""`mliscan check`: thresholds, exit codes, JUnit XML, GitHub step summary, config files."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.conftest import run_cli


@pytest.fixture()
def pair(mlp_bn_pair: Path) -> list[Path]:
    return [mlp_bn_pair / "init.safetensors", mlp_bn_pair / "final.safetensors"]


def test_pass_fail_and_usage_exit_codes(
    pair: list[Path], capsys, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config file around
    code, out, _ = run_cli(
        ["check", *pair, "--max-delta", "100", "--min-final-accuracy", "0", "-q"], capsys
    )
    assert code == 0 and out.count("PASS") == 2
    code, out, _ = run_cli(
        ["check", *pair, "--max-barrier", "-1", "--max-delta", "100", "-q"], capsys
    )
    assert code == 1
    assert "FAIL loss barrier: observed" in out and "allowed <= -1" in out
    code, _, err = run_cli(["check", *pair, "-q"], capsys)
    assert code == 2 and "no threshold set" in err


def test_junit_and_step_summary(pair: list[Path], capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit = tmp_path / "mli.xml"
    code, _, _ = run_cli(
        [
            "check",
            *pair,
            "--require-monotonic",
            "--tol",
            "100",
            "--max-gauss-length",
            "1e-9",
            "--max-delta",
            "100",
            "--junit",
            junit,
            "--json",
            tmp_path / "r.json",
            "-q",
        ],
        capsys,
    )
    assert code == 1  # the Gauss-length threshold fails
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"require_monotonic", "max_gauss_length", "max_delta"}
    failure = cases["max_gauss_length"].find("failure")
    assert failure is not None and "allowed <= 1e-09" in failure.get("message", "")
    assert cases["max_delta"].find("failure") is None
    text = summary.read_text()
    assert text.startswith("earlier step\n")  # appended, not overwritten
    assert "mliscan check ❌ failed" in text
    for needle in ("average Gauss length", "min-Δ", "<= 1e-09", "<= 100", "**FAIL**"):
        assert needle in text
    assert any(ch in text for ch in "▁▂▃▄▅▆▇█")  # the sparkline
    r = json.loads((tmp_path / "r.json").read_text())
    assert [c["name"] for c in r["checks"]] == [
        "require_monotonic",
        "max_delta",
        "max_gauss_length",
    ]
    assert r["gauss_length"] is not None and len(r["alphas"]) == 25  # the fast default


@pytest.mark.parametrize("kind", ["pyproject", "mliscan.toml"])
def test_thresholds_from_config(
    pair: list[Path], capsys, tmp_path: Path, monkeypatch, kind: str
) -> None:
    if kind == "pyproject":
        (tmp_path / "pyproject.toml").write_text(
            "[project]\nname='x'\n\n[tool.mliscan.check]\nmax-barrier = -1\nalphas = 7\n"
        )
    else:
        (tmp_path / "mliscan.toml").write_text("[check]\nmax_barrier = -1\nalphas = 7\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)  # found from a subfolder too
    code, out, _ = run_cli(["check", *pair, "-q", "--json", "-"], capsys)
    assert code == 1
    r = json.loads(out[out.index("{") :])
    assert len(r["alphas"]) == 7 and r["config"].endswith(
        kind if kind != "pyproject" else "pyproject.toml"
    )
    # the command line wins over the file
    code, _, _ = run_cli(["check", *pair, "-q", "--max-barrier", "100"], capsys)
    assert code == 0


def test_bad_config_is_a_usage_error(pair: list[Path], capsys, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mliscan.toml").write_text("[check]\nmax_detla = 1\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["check", *pair, "-q"], capsys)
    assert code == 2 and "max_detla" in err and len(err.strip().splitlines()) == 1


def test_integration_files_are_valid() -> None:
    import yaml

    from tests.conftest import REPO

    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    assert {"init", "final", "arch", "data", "max-delta", "require-monotonic"} <= set(
        action["inputs"]
    )
    assert any("mliscan check" in step.get("run", "") for step in action["runs"]["steps"])
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hooks[0]["id"] == "mliscan-check" and hooks[0]["entry"] == "mliscan check"
    readme = (REPO / "README.md").read_text()
    assert (
        "GITHUB_STEP_SUMMARY" in readme
        and "mli-check:" in readme
        and "[tool.mliscan.check]" in readme
    )
