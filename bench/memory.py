"""Peak resident memory of ``mliscan compare`` on a language model of 124M or 1B parameters.

Builds a randomly initialised model (``--model gpt2-small``: GPT-2 small, 124M parameters;
``--model pythia-1b``: GPT-NeoX with Pythia-1B's shape, 1.01B parameters; float32) and a
perturbed copy standing in for the trained model, saves both as transformers folders (with a
tiny word-level tokenizer), then runs ``mliscan compare`` in a fresh process and reads its
peak RSS. The interpreter's own footprint (python + torch + transformers + mliscan imported,
nothing loaded) is measured the same way, so the table shows both the total and the part the
comparison adds. ``--dir`` keeps the built folders (the 1B pair is 8 GB on disk) for reuse.

    python bench/memory.py [--model gpt2-small|pythia-1b] [--alphas 3] [--max-tokens 1024]
                           [--stored-dtype float32|bfloat16] [--gauss] [--dir DIR]
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


def _model(name: str):  # -> a transformers PreTrainedModel
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    if name == "gpt2-small":  # 124M parameters, tied embeddings
        return GPT2LMHeadModel(GPT2Config(architectures=["GPT2LMHeadModel"]))
    # EleutherAI/pythia-1b's config.json shape: 1,011,781,632 parameters, untied embeddings
    config = GPTNeoXConfig(
        architectures=["GPTNeoXForCausalLM"],
        hidden_size=2048,
        intermediate_size=8192,
        num_attention_heads=8,
        num_hidden_layers=16,
        rotary_pct=0.25,
        vocab_size=50304,
        max_position_embeddings=2048,
    )
    return GPTNeoXForCausalLM(config)


def build(folder: Path, name: str, dtype: str) -> int:
    import torch

    from tests.hubcache import CORPUS, tokenizer

    torch.manual_seed(0)
    model = _model(name)
    n = sum(p.numel() for p in model.parameters())
    if (folder / "final" / "config.json").is_file():  # kept from an earlier --dir run
        return n
    stored = getattr(torch, dtype)
    model.to(stored).save_pretrained(str(folder / "init"))
    model.float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.to(stored).save_pretrained(str(folder / "final"))
    for sub in ("init", "final"):
        tokenizer(folder / sub)
    (folder / "corpus.txt").write_text(CORPUS * 4)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["gpt2-small", "pythia-1b"], default="gpt2-small")
    ap.add_argument(
        "--stored-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="dtype of the saved checkpoints",
    )
    ap.add_argument("--dir", type=Path, help="build the pair here and keep it (reused if there)")
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
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        n = build(folder, args.model, args.stored_dtype)
        weights_mb = sum(f.stat().st_size for f in (folder / "init").glob("*.safetensors")) / 2**20
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
        "model": args.model,
        "parameters": n,
        "stored_dtype": args.stored_dtype,
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
