"""Peak resident memory of ``mliscan compare`` on a ~100M-parameter language model.

Builds a randomly initialised GPT-2 small (124M parameters, float32) and a perturbed copy
standing in for the trained model, saves both as transformers folders (with a tiny word-level
tokenizer), then runs ``mliscan compare`` in a fresh process and reads its peak RSS. The
interpreter's own footprint (python + torch + transformers + mliscan imported, nothing
loaded) is measured the same way, so the table shows both the total and the part the
comparison adds.

    python bench/memory.py [--alphas 3] [--max-tokens 1024] [--gauss]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(folder: Path) -> int:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.hubcache import CORPUS, tokenizer

    config = GPT2Config(architectures=["GPT2LMHeadModel"])  # GPT-2 small: 124M parameters
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(folder / "init"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(str(folder / "final"))
    for sub in ("init", "final"):
        tokenizer(folder / sub)
    (folder / "corpus.txt").write_text(CORPUS * 4)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alphas", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--gauss", action="store_true", help="include the Gauss length")
    ap.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    python = sys.executable
    if args.baseline:  # child: import what compare imports, load nothing
        import mliscan.adapters.hf
        import transformers  # noqa: F401
        from transformers import GPT2LMHeadModel  # noqa: F401

        import mliscan.cli.app
        import mliscan.pipeline  # noqa: F401

        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n = build(folder)
        weights_mb = (folder / "init" / "model.safetensors").stat().st_size / 2**20
        base, _ = _in_fresh_process([python, __file__, "--baseline"])
        cmd = [
            python,
            "-m",
            "mliscan.cli.app",
            "compare",
            str(folder / "init"),
            str(folder / "final"),
            "--data",
            "text",
            "--data-file",
            str(folder / "corpus.txt"),
            "--max-tokens",
            str(args.max_tokens),
            "--alphas",
            str(args.alphas),
            "-q",
            "--json",
            str(folder / "out.json"),
            "--device",
            "cpu",
        ]
        if not args.gauss:
            cmd.append("--no-gauss")
        # each figure from a small, fresh parent: a child forked from this process (which holds
        # the model it just built) would report this process's RSS as its own peak
        peak, wall = _in_fresh_process(cmd)
        out = json.loads((folder / "out.json").read_text())
    table = {
        "parameters": n,
        "weights_file_MiB": round(weights_mb, 1),
        "baseline_imports_MiB": round(base, 1),
        "compare_peak_MiB": round(peak, 1),
        "peak_over_weights": round(peak / weights_mb, 2),
        "added_over_weights": round((peak - base) / weights_mb, 2),
        "gauss": args.gauss,
        "alphas": args.alphas,
        "max_tokens": args.max_tokens,
        "wall_s": round(wall, 1),
        "loss": [round(v, 4) for v in out["loss"]],
    }
    print(json.dumps(table, indent=2))


def _in_fresh_process(cmd: list[str]) -> tuple[float, float]:
    code = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        f"p = subprocess.run({cmd!r}, capture_output=True, text=True)\n"
        "w = time.perf_counter() - t\n"
        "print(json.dumps([p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, w, p.stderr[-2000:]]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, peak, wall, err = json.loads(proc.stdout)
    if rc not in (0, 1):
        sys.exit(f"compare failed ({rc}):\n{err}")
    return peak, wall


if __name__ == "__main__":
    main()
