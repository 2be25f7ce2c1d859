"""The benchmark scripts run (a dry run of the GPU script on the CPU, tiny sizes).

Speed itself is measured by running bench/ by hand and reported as ratios, never asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run_on_cpu() -> None:
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "IMAGES": "16",
        "ALPHAS": "2",
        "REPEATS": "1",
        "PY": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for workload in ("mlp", "mlp-bn", "resnet20", "lstm-lm", "transformer-lm", "gpt2-tiny"):
        assert f"workload {workload} " in out
    assert "(d) mliscan + Gauss" in out and "Gauss length cost" in out
    assert "BN statistics of the whole data" in out


def _readme_table():
    spec = importlib.util.spec_from_file_location(
        "readme_table", ROOT / "bench" / "readme_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_speed_table_is_generated_from_the_committed_records() -> None:
    """The table between the markers parses, has a row per record in bench/results, and is
    exactly what bench/readme_table.py writes from those records (never typed by hand)."""
    table = _readme_table()
    records = sorted((ROOT / "bench" / "results").glob("*.json"))
    assert records
    rows = table.parse(table.current((ROOT / "README.md").read_text()))
    assert len(rows) == len(records)
    assert {r[0].split(" ")[0].rstrip(",") for r in rows} <= set(table.WORKLOADS)
    assert table.main(["--check", *map(str, records)]) == 0


def test_a_record_becomes_a_row_of_min_median_max_ratios(tmp_path: Path) -> None:
    table = _readme_table()
    seconds = {"(a) floor": [1.0, 1.0, 2.0], "(b) paper-style loop": [2.0, 3.0, 2.0]}
    seconds |= {"(c) mliscan": [1.0, 1.1, 2.2], "(d) mliscan + Gauss": [4.0, 4.4, 9.9]}
    record = {
        "workload": "mlp",
        "examples": 1797,
        "alphas": 50,
        "repeats": 3,
        "bn_text": "no BN",
        "device": "cpu",
        "threads": 1,
        "torch": "x",
        "methods": {k: {"seconds": v} for k, v in seconds.items()},
        "gauss_cost": [4.0, 4.0, 4.5],
    }
    for entry in record["methods"].values():
        floor = seconds["(a) floor"]
        entry["x_floor"] = [t / f for t, f in zip(entry["seconds"], floor, strict=True)]
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- speed-table -->\nold\n<!-- /speed-table -->\nafter\n")
    path = tmp_path / "mlp.json"
    path.write_text(json.dumps(record))
    assert table.main([str(path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("<!-- /speed-table -->\nafter\n")
    (row,) = table.parse(table.current(text))
    assert row[1:] == [
        "1.00",
        "2.00× (1.00/2.00/3.00)",
        "**1.00×** (1.00/1.10/1.10)",
        "**4.00×** (4.00/4.00/4.50)",
    ]
    assert table.main(["--check", str(path), "--readme", str(readme)]) == 0
