"""The README's quickstart commands, executed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _quickstart() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its quickstart block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_has_demo_and_test_and_ci_runs_the_test_command() -> None:
    cmds = _quickstart()
    assert cmds == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_quickstart_demo_runs(tmp_path: Path) -> None:
    """`make demo`, in this environment (the set-up step is what CI just did)."""
    venv = Path(sys.prefix)
    cmd = [
        *_quickstart()[0].split(),
        "-o",
        str(venv / ".mliscan-installed"),
        f"VENV={venv}",
        f"DEMO_OUT={tmp_path}",
    ]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "mliscan demo" in p.stdout and "sgd" in p.stdout and "adam-bn" in p.stdout
    for run in ("sgd", "adam-bn"):
        r = json.loads((tmp_path / run / "mli.json").read_text())
        assert r["loss_final"] < 0.1  # both converge on the digits
        assert (tmp_path / run / "run.json").exists()
    sgd = json.loads((tmp_path / "sgd" / "mli.json").read_text())
    adam = json.loads((tmp_path / "adam-bn" / "mli.json").read_text())
    assert sgd["monotonic"] is True
    # Adam + batch norm travels much further from its initialisation (Section 4.2.1)
    assert adam["normalized_distance"] > 3 * sgd["normalized_distance"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    _check_demo_table(p.stdout)
    # a rerun reuses both trained runs (no training) and prints the same table
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stderr.count("(reused)") == 2, again.stderr[-2000:]
    assert _rows(again.stdout) == _rows(p.stdout)


TABLE = re.compile(r"(<!-- demo-table -->\n```\n)(.*?)(```\n<!-- /demo-table -->)", re.S)


def _rows(text: str) -> dict[str, list[str]]:
    """The demo table's rows by path: the cells between the vertical bars."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] and cells[0] != "path":
            rows[cells[0]] = cells[1:]
    return rows


def _check_demo_table(printed: str) -> None:
    """The README's demo table is the demo's own output (numbers to 0.5% or 1e-3; the
    sparkline and verdicts exactly). MLISCAN_UPDATE_README=1 rewrites it from this run."""
    import os

    readme = REPO / "README.md"
    text = readme.read_text()
    match = TABLE.search(text)
    assert match, "README.md lost its demo-table block"
    if os.environ.get("MLISCAN_UPDATE_README") == "1":
        lines = [line.rstrip() for line in printed.strip("\n").splitlines()]
        # the table only: not make's echo of the command line
        lines = [line for line in lines if "mliscan demo --out" not in line]
        table = "\n".join(lines) + "\n"
        readme.write_text(text[: match.start(2)] + table + text[match.end(2) :])
        return
    shown, real = _rows(match.group(2)), _rows(printed)
    assert set(shown) == set(real), (sorted(shown), sorted(real))
    for path, cells in real.items():
        for a, b in zip(shown[path], cells, strict=True):
            try:
                x, y = float(a), float(b)
            except ValueError:
                assert a == b, (path, a, b)
                continue
            assert abs(x - y) <= max(1e-3, 5e-3 * abs(y)), (
                f"README demo table is stale for {path}: {a} shown, {b} now "
                "(rerun with MLISCAN_UPDATE_README=1)"
            )
