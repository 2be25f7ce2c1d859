"""The benchmark scripts run (a dry run of the GPU script on the CPU, tiny sizes).

Speed itself is measured by running bench/ by hand and reported as ratios, never asserted."""

from __future__ import annotations

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
