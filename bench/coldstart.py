"""Cold start of a short command: what a fresh `mliscan compare` costs beyond `import torch`.

    python bench/coldstart.py [--rounds 5] [--alphas 50] [--json FILE]

Two digits-MLP endpoints (seeds 0 and 1) are written to a temporary folder; then, in
interleaved rounds, a fresh interpreter runs ``import torch`` alone, and another runs
``mliscan compare A B --arch mlp --no-gauss --json -``. From the command's own timing record
the loss curve (BN, evaluation and the run-time check) is compared with the forward floor
of the same alphas (``bench/interpolation.py``'s floor, measured warm in this process), and
the one-time cost is the command's wall time less ``import torch`` and the loss curve:
interpreter start-up beyond torch, mliscan's and the CLI's imports, option parsing, loading
the endpoints and the data, building the module, writing the result. Prints min/median/max
over the rounds. (Profile a slow part with ``python -X importtime -m mliscan.cli.app
compare ...`` or ``python -m cProfile -m mliscan.cli.app compare ...``.) With
``PYTHONDONTWRITEBYTECODE`` set, every run compiles every module it imports again (several
milliseconds a module): the script says so when it is set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import interpolation as bench  # bench/interpolation.py: the floor

from mliscan.adapter import DataInfo
from mliscan.data import load_dataset
from mliscan.evaluate import prepare_data
from mliscan.registry import get_adapter
from mliscan.spec import DataSpec

# `import torch`, then the command as `mliscan` runs it, timed from after the import; prints
# the command's output, then the seconds on a line of their own
TIMED = (
    "import sys, time, torch; t = time.perf_counter(); from mliscan.cli.app import main; "
    "rc = main(sys.argv[1:]); sys.stdout.flush(); print(time.perf_counter() - t); sys.exit(rc)"
)


def endpoints(folder: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    adapter = get_adapter("mlp")
    options = adapter.parse_options({})
    ds = load_dataset(DataSpec("digits"))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        module = adapter.build(options, DataInfo(ds.input_shape, 10))
        path = folder / f"seed{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
        paths.append(path)
    return paths[0], paths[1]


def wall(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t, proc.stdout


def stats(values: list[float]) -> str:
    s = sorted(values)
    return f"{s[0]:.3f}/{s[len(s) // 2]:.3f}/{s[-1]:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--alphas", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the record to this file (JSON)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="mliscan-cold-") as tmp:
        a, b = endpoints(Path(tmp))
        # the warm forward floor of the same alphas, in this process
        adapter = get_adapter("mlp")
        ds = load_dataset(DataSpec("digits"))
        torch.manual_seed(0)
        module = adapter.build(adapter.parse_options({}), DataInfo(ds.input_shape, 10))
        cpu = torch.device("cpu")
        data = prepare_data(adapter, ds.inputs, ds.targets, cpu, torch.float32)
        bench.ALPHAS = args.alphas
        bs = bench.best_batch_size(module, adapter, data, cpu)
        compare = [py, "-m", "mliscan.cli.app", "compare", str(a), str(b), "--arch", "mlp"]
        compare += ["--no-gauss", "--alphas", str(args.alphas), "--json", "-"]
        # the same command in one interpreter that imports torch first and times the rest:
        # the one-time cost beyond torch without the noise of two processes' start-ups
        timed = [py, "-c", TIMED, *compare[3:]]
        keys = ("torch", "command", "curve", "floor", "after_torch")
        rows: dict[str, list[float]] = {k: [] for k in keys}
        after_curve: list[float] = []
        wall([py, "-c", "import torch"], env)  # the file cache warm for both
        wall(compare, env)
        for _ in range(args.rounds):
            rows["torch"].append(wall([py, "-c", "import torch"], env)[0])
            seconds, out = wall(compare, env)
            rows["command"].append(seconds)
            timing = json.loads(out)["timing"]
            rows["curve"].append(timing["bn"] + timing["evaluate"] + timing.get("check", 0.0))
            _, out = wall(timed, env)
            record = json.loads(out[: out.rindex("\n", 0, len(out) - 1)])
            after = float(out.strip().rsplit("\n", 1)[-1])
            t = record["timing"]
            rows["after_torch"].append(after)
            after_curve.append(after - (t["bn"] + t["evaluate"] + t.get("check", 0.0)))
            rows["floor"].append(
                bench._time(lambda: bench.floor(module, adapter, data, bs, False), cpu)
            )
    one_time = [
        c - t - k for c, t, k in zip(rows["command"], rows["torch"], rows["curve"], strict=True)
    ]
    ratio = [k / f for k, f in zip(rows["curve"], rows["floor"], strict=True)]
    print(
        f"cold `mliscan compare` (digits MLP, {args.alphas} alphas, --no-gauss), threads "
        f"{args.threads}, {args.rounds} rounds (min/median/max):"
    )
    print(f"  import torch alone          {stats(rows['torch'])} s")
    print(f"  the whole command           {stats(rows['command'])} s")
    print(f"  its loss curve              {stats(rows['curve'])} s")
    print(f"  forward floor ({args.alphas} passes)  {stats(rows['floor'])} s")
    print(f"  one-time cost beyond torch  {stats(one_time)} s  (command - torch - curve)")
    print(
        f"  the same in one process     {stats(after_curve)} s  "
        "(from after `import torch` to exit, less the curve)"
    )
    print(f"  loss curve / forward floor  {stats(ratio)}x")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("  (PYTHONDONTWRITEBYTECODE is set: every import compiled again, not cached)")
    if args.json is not None:
        record = {
            **rows,
            "one_time": one_time,
            "one_time_in_process": after_curve,
            "curve_over_floor": ratio,
            "alphas": args.alphas,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
