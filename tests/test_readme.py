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
