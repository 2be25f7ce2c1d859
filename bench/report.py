"""Wall time of ``mliscan report`` over N runs whose metrics are already cached.

Writes N synthetic run folders (run.json and a cached ``mli-<hash>.json`` each, as a first
report leaves them), then times the whole command in a fresh process (interpreter start-up,
tables, Parquet, the three figures as PNG and SVG, and the HTML page).

    python bench/report.py [--runs 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_runs(root: Path, n: int) -> None:
    import numpy as np

    from mliscan import reporting as rp
    from mliscan.spec import EvalSpec

    rng = np.random.default_rng(0)
    alphas = np.linspace(0, 1, 50)
    for i in range(n):
        d = root / f"run-{i:03d}"
        d.mkdir(parents=True)
        (d / "init.safetensors").write_bytes(b"")
        (d / "final.safetensors").write_bytes(b"")
        opt = ["sgd", "adam", "rmsprop"][i % 3]
        lr = [0.001, 0.01, 0.1, 1.0][(i // 3) % 4]
        bn = bool((i // 12) % 2)
        cfg = {
            "arch": "mlp",
            "optimizer": opt,
            "lr": lr,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "epochs": 10,
            "batch_size": 64,
            "seed": i,
            "data": {"name": "digits"},
            "arch_options": {"bn": bn},
        }
        final = float(rng.uniform(0.001, 0.2))
        bump = float(rng.exponential(0.01)) if bn else 0.0
        loss = 2.3 * (1 - alphas) ** 2 + final + bump * np.exp(-((alphas - 0.8) ** 2) / 0.01)
        dist = float(rng.uniform(0.5, 20))
        metrics = {
            "min_delta": float(max(0.0, np.max(np.diff(loss)))) if bn else 0.0,
            "distance": dist * 10,
            "normalized_distance": dist,
            "gauss_length": 0.3 * dist**0.6 * float(rng.lognormal(0, 0.1)),
            "barrier": 0.0,
            "alphas": alphas.tolist(),
            "loss": loss.tolist(),
            "loss_init": float(loss[0]),
            "loss_final": float(loss[-1]),
            "accuracy_final": 1.0,
        }
        (d / "run.json").write_text(
            json.dumps(
                {
                    "config": cfg,
                    "arch_options": {"bn": bn},
                    "final_train_loss": final,
                    "final_train_accuracy": 1.0,
                }
            )
        )
        (d / f"mli-{rp.cache_key(d, EvalSpec())}.json").write_text(json.dumps(metrics))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_runs(root / "runs", args.runs)
        cmd = [
            sys.executable,
            "-m",
            "mliscan.cli.app",
            "report",
            str(root / "runs"),
            "--out",
            str(root / "out"),
            "--html",
            str(root / "out" / "report.html"),
            "-q",
        ]
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            if proc.returncode != 0:
                sys.exit(proc.stderr)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python = time.perf_counter() - t
    print(
        json.dumps(
            {
                "runs": args.runs,
                "median_s": round(statistics.median(times), 2),
                "all_s": [round(x, 2) for x in times],
                "bare_python_s": round(python, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
