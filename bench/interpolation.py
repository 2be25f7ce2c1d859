"""Benchmark of the interpolation engine against the forward-pass floor and a paper-style loop.

    python bench/interpolation.py --workload NAME --device cpu|cuda [--gauss]

(NAME: mlp, mlp-bn, resnet20, lstm-lm, transformer-lm, gpt2-tiny, pythia-shaped, llama-tiny.)

Times, interleaved over --repeats rounds, for 50 alphas:
  (a) floor         50 evaluation passes of the final model over the data at the best batch
                    size (x2 with batch norm: one re-estimation pass and one evaluation pass)
  (b) paper-style   deepcopy + load_state_dict per alpha, one warm-up epoch at momentum 0.1
                    (batches of 256), evaluation in batches of 256; Gauss length by double
                    backward (as in the paper's released code)
  (c) mliscan       PathEvaluator.run (loss and accuracy curve); with batch norm, the default
                    full-data statistics: one full-batch train-mode pass per alpha that is
                    also the evaluation (--bn-batch-size N times the pooled per-batch mode)
  (d) mliscan+gauss the same with the average Gauss length
  (d') mliscan+Gauss by nested jvp, for models with second-order rules (the reference)
  (e) loss-landscapes linear_interpolation, when that package is installed (no BN
                    re-estimation, so its curve differs on BN models)
and prints, per method, min/median/max over the rounds of its seconds and of its ratio to
(a) in the same round (and to (b)), with the spread of the ratio ((max - min) / median),
and the ratio of the fastest rounds (each method's least disturbed round: other work on the
machine only ever adds time); ``--quick`` times (a), (c) and (d) only;
``--json FILE`` writes the same record (``bench/readme_table.py`` turns such records into
the README's speed table). Speed is reported as ratios measured in one run, never as
absolute targets in tests. The floor's batch size is the fastest of a few (timed, per
round, at the start); mliscan's is its own choice (from memory, see mliscan.resources).
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mliscan.adapter import DataInfo
from mliscan.batchnorm import batch_slices
from mliscan.data import load_dataset
from mliscan.evaluate import PathEvaluator, alpha_grid, prepare_data
from mliscan.registry import get_adapter
from mliscan.spec import BNSpec, DataSpec, EvalSpec

ALPHAS = 50  # set by --alphas


def workload(name: str, device: torch.device, images: int):
    if name in ("mlp", "mlp-bn"):
        adapter = get_adapter("mlp")
        opts = adapter.parse_options({"hidden": "128,128", "bn": name == "mlp-bn"})
        ds = load_dataset(DataSpec("digits"))
        x, y, info = ds.inputs, ds.targets, DataInfo(ds.input_shape, 10)
    elif name in ("lstm-lm", "transformer-lm"):
        # the built-in word-level LMs at their default sizes on the bundled tinytext
        adapter = get_adapter(name)
        opts = adapter.parse_options({})
        ds = load_dataset(DataSpec(adapter.default_data))
        x, y, info = ds.inputs, ds.targets, DataInfo(ds.input_shape, ds.num_classes)
    elif name in HUB_WORKLOADS:
        return hub_workload(name, device)
    elif name == "resnet20":
        adapter = get_adapter("resnet20")
        opts = adapter.parse_options({})
        g = torch.Generator().manual_seed(0)
        x = torch.randn(images, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (images,), generator=g)
        info = DataInfo((3, 32, 32), 10)
    else:
        raise SystemExit(f"unknown workload {name}")
    torch.manual_seed(0)
    module = adapter.build(opts, info)
    theta0 = {k: v.clone() for k, v in module.state_dict().items()}
    torch.manual_seed(1)
    other = adapter.build(opts, info).state_dict()
    theta1 = {
        k: (v + 0.5 * other[k]) if v.is_floating_point() and "running" not in k else v.clone()
        for k, v in theta0.items()
    }
    data = prepare_data(adapter, x, y, device, torch.float32)
    return adapter, module.to(device), theta0, theta1, data


# Hub language models, built offline into a temporary Hugging Face cache (tests/hubcache.py):
# step0 (the init) and main (3 noisy steps later); the tests' corpus as 64-token sequences.
HUB_WORKLOADS = {
    "gpt2-tiny": "gpt2",
    "pythia-shaped": "pythia",
    "llama-tiny": "llama",
    "bert-tiny": "bert",  # masked LM
    "bert-cls-tiny": "bert-cls",  # sequence classifier on a labelled CSV
}


def hub_workload(name: str, device: torch.device):
    import os
    import tempfile

    from mliscan.pipeline import open_source, setup
    from tests import hubcache

    kind = HUB_WORKLOADS[name]
    root = Path(tempfile.mkdtemp(prefix="mliscan-bench-hub-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the cache goes with the run
    repo = f"org/{name}"
    for rev, steps in (("step0", 0), ("main", 3)):
        files = hubcache.hf_model_files(kind, 0, steps=steps, parent=root)
        hubcache.add_revision(root / "cache", repo, [rev], files)
    (root / "corpus.txt").write_text(hubcache.CORPUS)
    words = hubcache.WORDS
    rows = [
        f"{' '.join(words[i % 30 : i % 30 + 6])},{'pos' if i % 3 else 'neg'}" for i in range(256)
    ]
    (root / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    os.environ["HF_HUB_CACHE"] = str(root / "cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    first, last = open_source(f"hf:{repo}@step0"), open_source(f"hf:{repo}@main")
    if kind == "bert-cls":
        data = DataSpec(name="text", data_file=str(root / "reviews.csv"))
    else:
        data = DataSpec(name="text", data_file=str(root / "corpus.txt"), seq_len=64)
    ctx = setup(first, None, None, data, EvalSpec(device=str(device)))
    adapter = ctx.choice.adapter
    options = ctx.choice.options
    theta0 = adapter.map_keys(first.tensors, options)
    theta1 = adapter.map_keys(last.tensors, options)
    return adapter, ctx.module, theta0, theta1, ctx.prepared


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_batch_size(module: nn.Module, adapter, data, device, rounds: int = 3) -> int:
    """The floor's batch size: the fastest candidate, each timed once per round, rounds
    interleaved, by its fastest round (a noisy round does not decide)."""
    module.eval()
    sizes = sorted(
        {bs for bs in (16, 64, 128, 256, 512, 1024, 4096) if bs < len(data)} | {len(data)}
    )
    best: dict[int, float] = {}
    for _ in range(rounds):
        for bs in sizes:
            t = _time(lambda bs=bs: eval_pass(module, adapter, data, bs), device)
            best[bs] = min(best.get(bs, float("inf")), t)
    return min(sizes, key=lambda bs: best[bs])


@torch.inference_mode()
def eval_pass(module, adapter, data, bs: int) -> float:
    total = torch.zeros((), dtype=torch.float64, device=data.inputs.device)
    for s in batch_slices(len(data), bs):
        total += adapter.loss(module(data.inputs[s]), data.targets[s]).double().sum()
    return float(total)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def floor(module, adapter, data, bs: int, has_bn: bool) -> None:
    module.load_state_dict(module.state_dict())
    module.eval()
    for _ in range(ALPHAS * (2 if has_bn else 1)):
        eval_pass(module, adapter, data, bs)


def paper_style(template, adapter, theta0, theta1, data, has_bn: bool, gauss: bool) -> None:
    for alpha in alpha_grid(ALPHAS):
        model = copy.deepcopy(template)
        state = {
            k: (theta0[k] + alpha * (theta1[k] - theta0[k]))
            if theta0[k].is_floating_point()
            else theta0[k]
            for k in theta0
        }
        model.load_state_dict(state, strict=False)  # tied heads (Hub LMs) are absent
        if has_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
                    m.momentum = 0.1
            model.train()
            with torch.no_grad():
                for s in batch_slices(len(data), 256):
                    model(data.inputs[s])
        model.eval()
        eval_pass(model, adapter, data, 256)
        if gauss:
            _double_backward_gauss(model, theta0, theta1, data, float(alpha))


def _double_backward_gauss(model, theta0, theta1, data, alpha: float) -> None:
    """z' and z'' by the double-backward trick per batch (the paper code's approach)."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    for s in batch_slices(len(data), 256):
        a = torch.tensor(alpha, requires_grad=True, device=data.inputs.device)
        params = {
            n: theta0[n].to(a.device) + a * (theta1[n] - theta0[n]).to(a.device) for n in names
        }
        z = functional_call(model, params, (data.inputs[s],))
        u = torch.ones_like(z, requires_grad=True)
        (g,) = torch.autograd.grad(z, a, grad_outputs=u, create_graph=True)
        (dz,) = torch.autograd.grad(g, u, create_graph=True)
        u2 = torch.ones_like(dz, requires_grad=True)
        (g2,) = torch.autograd.grad(dz, a, grad_outputs=u2, create_graph=True)
        (ddz,) = torch.autograd.grad(g2, u2)
        del z, dz, ddz


def loss_landscapes_run(module, adapter, theta0, theta1, data):
    import loss_landscapes
    import loss_landscapes.metrics

    m0 = copy.deepcopy(module)
    m0.load_state_dict(theta0)
    m1 = copy.deepcopy(module)
    m1.load_state_dict(theta1)
    metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), data.inputs, data.targets)
    return loss_landscapes.linear_interpolation(m0, m1, metric, ALPHAS, deepcopy_model=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--workload",
        default="mlp",
        choices=["mlp", "mlp-bn", "resnet20", "lstm-lm", "transformer-lm", *HUB_WORKLOADS],
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--images", type=int, default=1024, help="resnet20: number of CIFAR-shaped images"
    )
    p.add_argument("--gauss", action="store_true", help="also time Gauss length (d, and b with it)")
    p.add_argument("--alphas", type=int, default=50, help="alphas per path (the paper: 50)")
    p.add_argument(
        "--bn-batch-size",
        default="all",
        help="mliscan's BN statistics: all (default: the whole data as one batch) or N",
    )
    p.add_argument("--json", type=Path, help="also write the record to this file (JSON)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="only the floor, mliscan and mliscan + Gauss (no paper-style loops, no nested "
        "jvp): the Gauss cost and the loss curve's ratio to its floor in a fraction of the time",
    )
    args = p.parse_args()
    global ALPHAS
    ALPHAS = args.alphas
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    adapter, module, theta0, theta1, data = workload(args.workload, device, args.images)
    has_bn = bool(adapter.bn_modules(module))
    bs = best_batch_size(module, adapter, data, device)
    template = copy.deepcopy(module)
    bn = BNSpec(batch_size=None if args.bn_batch_size == "all" else int(args.bn_batch_size))
    engine = PathEvaluator(adapter, module, theta0, theta1, data, EvalSpec(bn=bn, gauss=False))
    alphas = alpha_grid(ALPHAS)
    _ = engine.batch_size, engine.bn_chunk  # one-off probes (like the floor's): not timed

    last: dict[str, object] = {}  # the latest curve of (c) and (d): the check's share
    methods: dict[str, Callable[[], object]] = {
        "(a) floor": lambda: floor(template, adapter, data, bs, has_bn),
        "(b) paper-style loop": lambda: paper_style(
            template, adapter, theta0, theta1, data, has_bn, False
        ),
        "(c) mliscan": lambda: last.__setitem__("(c)", engine.run(alphas, gauss=False)),
    }
    if args.quick:
        del methods["(b) paper-style loop"]
    if args.gauss:
        methods["(b') paper-style + Gauss (double backward)"] = lambda: paper_style(
            template, adapter, theta0, theta1, data, has_bn, True
        )
        methods["(d) mliscan + Gauss"] = lambda: last.__setitem__(
            "(d)", engine.run(alphas, gauss=True)
        )
        if engine.fast_gauss and not args.quick:  # the general fallback, for comparison
            by_jvp = PathEvaluator(
                adapter, module, theta0, theta1, data, EvalSpec(bn=bn, gauss_method="jvp")
            )
            methods["(d') mliscan + Gauss by nested jvp"] = lambda: by_jvp.run(alphas, gauss=True)
        if adapter.custom_logits or args.quick:  # the paper's reads image classifiers only
            del methods["(b') paper-style + Gauss (double backward)"]
    try:
        if args.quick:
            raise ImportError  # loss-landscapes left out too
        import loss_landscapes  # noqa: F401

        methods["(e) loss-landscapes (no BN re-estimation)"] = lambda: loss_landscapes_run(
            template, adapter, theta0, theta1, data
        )
    except ImportError:
        pass
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            times[name].append(_time(fn, device))
    bn_text = "no BN"
    if has_bn:
        bn_text = "BN statistics " + (
            "of the whole data" if bn.batch_size is None else f"in batches of {bn.batch_size}"
        )
        if engine.bn_chunk is not None:
            bn_text += f" (chunked by {engine.bn_chunk})"
    record = {
        "workload": args.workload,
        "examples": len(data),
        "bn": has_bn,
        "bn_text": bn_text,
        "device": str(device),
        "threads": args.threads,
        "alphas": ALPHAS,
        "repeats": args.repeats,
        "images": args.images if args.workload == "resnet20" else None,
        "floor_batch_size": bs,
        "batch_size": engine.batch_size,
        "second_order_batch_size": engine.resources.second_order_chosen,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "methods": {k: {"seconds": v} for k, v in times.items()},
    }
    _ratios(record, "(a) floor", "x_floor")
    if "(b) paper-style loop" in times:
        _ratios(record, "(b) paper-style loop", "x_paper")
    if args.gauss:
        record["gauss_cost"] = [
            d / c for d, c in zip(times["(d) mliscan + Gauss"], times["(c) mliscan"], strict=True)
        ]
        record["gauss_fastest"] = min(times["(d) mliscan + Gauss"]) / min(times["(c) mliscan"])
    record["check_share"] = {}
    for key, curve in last.items():  # the run-time check of the fast paths (first 2 alphas)
        timing = curve.timing  # type: ignore[attr-defined]
        share = timing.get("check", 0.0) / max(1e-12, sum(timing.values()))
        paths = sorted({p for ps in curve.paths.values() for p in ps})  # type: ignore[attr-defined]
        record["check_share"][key] = {"share": share, "paths": paths}
    print_record(record)
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


def _ratios(record: dict, base: str, key: str) -> None:
    """Each method's time over ``base``'s in the same round."""
    ref = record["methods"][base]["seconds"]
    for entry in record["methods"].values():
        entry[key] = [t / r for t, r in zip(entry["seconds"], ref, strict=True)]
        # the ratio of the fastest rounds: noise from other work only ever adds time, so
        # each method's fastest round is its least disturbed one
        entry[f"{key}_fastest"] = min(entry["seconds"]) / min(ref)


def stats(values: list[float]) -> tuple[float, float, float, float]:
    """min, median, max and the spread (max - min) / median."""
    med = statistics.median(values)
    return min(values), med, max(values), (max(values) - min(values)) / med if med else 0.0


def span(values: list[float], digits: int = 2) -> str:
    lo, med, hi, _ = stats(values)
    return f"{lo:.{digits}f}/{med:.{digits}f}/{hi:.{digits}f}"


def print_record(record: dict) -> None:
    r = record
    print(
        f"workload {r['workload']} ({r['examples']} examples, BN {'on' if r['bn'] else 'off'}), "
        f"device {r['device']}, threads {r['threads']}, {r['alphas']} alphas, "
        f"floor batch size {r['floor_batch_size']}, mliscan batch size {r['batch_size']} "
        f"(second-order {r['second_order_batch_size']}), {r['bn_text']}, "
        f"{r['repeats']} interleaved rounds (min/median/max over rounds; ratios within a round)"
    )
    print(
        f"{'method':45s} {'seconds':>22s} {'x floor':>16s} {'spread':>7s} {'fastest':>8s} "
        f"{'x paper':>16s}"
    )
    for name, m in r["methods"].items():
        paper = span(m["x_paper"]) if "x_paper" in m else "-"
        print(
            f"{name:45s} {span(m['seconds'], 4):>22s} {span(m['x_floor']):>16s} "
            f"{stats(m['x_floor'])[3]:7.1%} {m['x_floor_fastest']:7.2f}x {paper:>16s}"
        )
    if "gauss_cost" in r:
        lo, med, hi, spread = stats(r["gauss_cost"])
        print(
            f"Gauss length cost: (d) / (c) = {med:.2f}x the loss-only scan "
            f"(min {lo:.2f}, max {hi:.2f}, spread {spread:.1%}; "
            f"fastest rounds {r['gauss_fastest']:.2f}x)"
        )
    for key, c in r["check_share"].items():
        print(
            f"{key} run-time check: {c['share']:.1%} of the scan; paths used: {', '.join(c['paths'])}"
        )


if __name__ == "__main__":
    main()
