"""The README's quickstart commands, executed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal, InvalidOperation
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
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[-1] == "make test"  # CI ends with the README's own command
    # ... after this file at one thread (make test runs it at torch's default)
    assert any("OMP_NUM_THREADS=1" in c and "tests/test_readme.py" in c for c in commands)


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
    # Adam + batch norm travels much further from its initialisation (Section 4.2.1), and
    # its path rises by more than the paper's 1e-3 (Table 1's threshold)
    assert adam["normalized_distance"] > 3 * sgd["normalized_distance"]
    assert adam["monotonic"] is False and adam["min_delta"] > 1e-3
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


def _last_place(cell: str) -> Decimal:
    """One unit in the last digit shown: 1e-4 for ``136.8829``, 1e-8 for ``5.720e-05``."""
    return Decimal(1).scaleb(Decimal(cell).as_tuple().exponent)


def _check_demo_table(printed: str) -> None:
    """The README's demo table is the demo's own output: the same cells, each number within
    one unit of its last digit. The demo trains and evaluates in float64 (mliscan/cli/
    demo.py says why), and its tables were identical at 1, 2 and 4 threads and with torch's
    kernels for other CPUs (weights within 1e-11 of each other); the unit allows only a
    number that lies that close to a rounding boundary. MLISCAN_UPDATE_README=1 rewrites
    the table from this run."""
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
                x, y = Decimal(a), Decimal(b)
            except InvalidOperation:  # verdicts, the sparkline
                x = y = None
            if x is None or y is None or not (x.is_finite() and y.is_finite()):
                assert a == b, (path, a, b)
                continue
            assert abs(x - y) <= _last_place(a), (
                f"README demo table is stale for {path}: {a} shown, {b} now "
                "(rerun with MLISCAN_UPDATE_README=1)"
            )
