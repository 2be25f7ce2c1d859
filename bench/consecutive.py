"""Consecutive runs of ``bench/interpolation.py``: how far a ratio moves from run to run.

    python bench/consecutive.py --runs 5 --workloads gpt2-tiny bert-tiny [-- EXTRA ARGS]

Each run is a fresh process (``bench/interpolation.py --workload W --gauss --threads 1
--quick``, 10 alphas, 5 rounds unless EXTRA ARGS say otherwise); per workload it prints, for
each run, the loss curve's and the Gauss length's ratios (the fastest rounds' ratio, and the
median of the within-round ratios), then the worst and the spread over the runs. ``--json
FILE`` keeps every run's record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(workload: str, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, str(HERE / "interpolation.py"), "--workload", workload, "--gauss"]
    cmd += ["--threads", "1", "--quick", "--alphas", "10", "--repeats", "5", *extra]
    cmd += ["--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads(out.read_text())


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--workloads", nargs="+", required=True)
    p.add_argument("--json", type=Path, help="write every run's record here (a JSON list)")
    p.add_argument("extra", nargs="*", help="more arguments for bench/interpolation.py")
    args = p.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="mliscan-bench-") as tmp:
        for workload in args.workloads:
            curve, gauss = [], []
            print(f"{workload}: run  loss curve / floor (fastest, median)  Gauss / loss-only")
            for i in range(args.runs):
                r = run(workload, args.extra, Path(tmp) / f"{workload}-{i}.json")
                records.append(r)
                scan = r["methods"]["(c) mliscan"]
                c = (scan["x_floor_fastest"], median(scan["x_floor"]))
                g = (r["gauss_fastest"], median(r["gauss_cost"]))
                curve.append(c)
                gauss.append(g)
                print(
                    f"  {i + 1}   {c[0]:.2f}x, {c[1]:.2f}x{'':22s}{g[0]:.2f}x, {g[1]:.2f}x",
                    flush=True,
                )
            for label, values in (("loss curve / floor", curve), ("Gauss / loss-only", gauss)):
                fast = [v[0] for v in values]
                med = [v[1] for v in values]
                print(
                    f"  {label}: worst of {args.runs} runs {max(fast):.2f}x (fastest rounds), "
                    f"{max(med):.2f}x (median); spread over runs {(max(fast) - min(fast)) / median(fast):.1%}"
                    f" (fastest), {(max(med) - min(med)) / median(med):.1%} (median)"
                )
    if args.json is not None:
        args.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
