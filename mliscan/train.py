"""Training that produces init/final pairs for MLI studies.

``init.safetensors`` is written before the first step and ``final.safetensors`` after the
last, each atomically and each carrying mliscan metadata (architecture, options, data), so
``mliscan compare`` needs no ``--arch`` for them. ``run.json`` is written last: a folder
without it is an unfinished run. The same seed gives a byte-identical init file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from mliscan import __version__, batchnorm
from mliscan.adapter import DataInfo, probe_forward
from mliscan.checkpoints import is_safe_relative, save_checkpoint
from mliscan.data import has_test_split, load_dataset
from mliscan.errors import OutputExistsError, UsageError
from mliscan.evaluate import PathEvaluator, prepare_data, resolve_device
from mliscan.paths import (
    FINAL_FILE,
    INIT_FILE,
    RUN_FILE,
    atomic_write_json,
    checkpoint_name,
    read_json,
)
from mliscan.registry import get_adapter
from mliscan.spec import DataSpec, EvalSpec, Spec, opt, option_of

OPTIMIZERS = ("sgd", "adam", "rmsprop")


@dataclass(frozen=True)
class TrainSpec(Spec):
    """One training run (validated at construction, as every spec)."""

    concern: ClassVar[str] = "training"
    arch: str = opt("mlp", "Architecture adapter.", numeric=True)
    arch_options: dict[str, Any] = field(default_factory=dict)
    """Options as given (parsed by the adapter)."""
    data: DataSpec = field(default_factory=DataSpec)
    optimizer: Literal["sgd", "adam", "rmsprop"] = opt("sgd", "The optimizer.")
    lr: float = opt(0.1, "Learning rate.", ge=0)
    momentum: float = opt(0.0, "SGD momentum (the paper's SGD runs use none).", ge=0)
    weight_decay: float = opt(0.0, "Weight decay.", ge=0)
    epochs: int = opt(100, "Passes over the training set (at most).", ge=1)
    batch_size: int = opt(128, "Training batch size.", ge=1)
    seed: int = opt(0, "Random seed.")
    until_loss: float | None = opt(
        None, "Stop after the first epoch whose training loss is below this value.", ge=0
    )
    switch_optimizer: Literal["sgd", "adam", "rmsprop"] | None = opt(
        None, "Switch to this optimizer at epoch switch_at (the paper's Appendix C.4 ablation)."
    )
    switch_at: int | None = opt(None, "Epoch of the optimizer switch.", ge=1)
    augment: bool = opt(
        False,
        "Random crop (padding 4) and horizontal flip of training batches (CIFAR); the MLI "
        "evaluation always uses the un-augmented training set.",
    )
    amp: bool = opt(False, "Mixed precision (bfloat16 autocast) for the training steps.")
    dtype: Literal["float32", "float64"] = opt(
        "float32",
        "Working dtype of the training; both checkpoints are written in it. float64 keeps a "
        "small run's result the same on every CPU and thread count (summation-order rounding "
        "differences stay near 1e-16 instead of 1e-7 before training amplifies them).",
    )
    device: str = opt("cpu", "Training device.", numeric=False)
    save_every: int | None = opt(
        None,
        "Keep the weights every K epochs as checkpoints/epoch-<k>.safetensors (for "
        "mliscan trajectory).",
        ge=1,
        numeric=False,
    )

    def check(self) -> None:
        if self.lr <= 0:
            raise self.fail("lr", f"must be above 0, got {self.lr!r}")
        if (self.switch_optimizer is None) != (self.switch_at is None):
            raise self.fail("switch_at", "--switch-optimizer and --switch-at go together")
        if self.amp and self.dtype == "float64":
            raise self.fail("dtype", "float64 and amp (bfloat16 autocast) exclude each other")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.save_every is None:  # runs recorded before the option stay finished
            del out["save_every"]
        if self.dtype == "float32":  # likewise
            del out["dtype"]
        return out


EpochFn = Callable[[int, int, float, float], None]


def make_optimizer(spec: TrainSpec, params: Any, name: str | None = None) -> torch.optim.Optimizer:
    name = name or spec.optimizer
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise UsageError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def train(
    spec: TrainSpec,
    out_dir: str | Path,
    on_epoch: EpochFn | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train one model; returns the run record also written to ``run.json``.

    Everything the run needs (both data splits, the optimizer, the device) is checked
    before ``init.safetensors`` is written. A non-finite training loss stops the run: its
    ``run.json`` then says ``status: diverged`` with the epoch, and no final weights are
    written (a divergence is a result, not a crash). A finished run of other settings in
    ``out_dir`` is refused (:func:`refuse_other_run`) unless ``overwrite``."""
    out = Path(out_dir)
    t_start = time.perf_counter()
    previous = finished_run(out)
    replaced = previous is not None and bool(run_differences(previous, spec))
    if replaced and previous is not None and not overwrite:
        raise OutputExistsError(
            f"{out} holds a finished run ({previous.get('status')}) with other settings: "
            f"{'; '.join(run_differences(previous, spec))}. Training would replace it: "
            "choose another --out, or pass --overwrite to train again in its place"
        )
    adapter = get_adapter(spec.arch)
    if not adapter.trainable:
        raise UsageError(
            f"--arch {adapter.name} evaluates existing models (hub checkpoints); mliscan train "
            "trains the paper's architectures (see `mliscan adapters`)"
        )
    options = adapter.parse_options(spec.arch_options)
    dataset = load_dataset(spec.data)
    test = _test_split(spec)  # a missing test split fails now, not after training
    device = resolve_device(spec.device)

    dtype = getattr(torch, spec.dtype)
    torch.manual_seed(spec.seed)
    with default_dtype(dtype):
        module = adapter.build(options, DataInfo(dataset.input_shape, dataset.num_classes))
    module.to(dtype=dtype)
    meta = {
        "arch": adapter.name,
        "arch_options": adapter.options_to_dict(options),
        "data": {"name": dataset.name, "split": dataset.split, "limit": spec.data.limit}
        | ({"seq_len": spec.data.seq_len} if spec.data.seq_len is not None else {}),
        "seed": spec.seed,
        "mliscan_version": __version__,
    }
    if adapter.bn_modules(module) and min(len(dataset), spec.batch_size) < 2:
        raise UsageError(
            f"batch norm needs batches of at least 2 examples (--batch-size {spec.batch_size}, "
            f"{len(dataset)} examples); raise --batch-size or --data-limit, or use --no-bn"
        )
    theta0 = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.to(device).train()
    prepared = prepare_data(adapter, dataset.inputs, dataset.targets, device, dtype)
    probe_forward(adapter, module, prepared.inputs, dataset.name)
    module.train()
    optimizer = make_optimizer(spec, module.parameters())
    if replaced and previous is not None:  # the old run's files go before the new ones come
        _remove_run(out, previous)
    save_checkpoint(out / INIT_FILE, theta0, {**meta, "role": "init"})
    gen = torch.Generator().manual_seed(spec.seed)
    history: list[dict[str, float]] = []
    n = len(prepared)
    param_names = [k for k, _ in module.named_parameters()]
    start = {k: theta0[k].to(device) for k in param_names}
    stopped_at = None
    diverged_at: int | None = None
    kept: list[dict[str, Any]] = []
    for epoch in range(spec.epochs):
        if spec.switch_optimizer is not None and epoch == spec.switch_at:
            optimizer = make_optimizer(spec, module.parameters(), spec.switch_optimizer)
        order = torch.randperm(n, generator=gen).to(device)
        total, correct = 0.0, 0.0
        for s in batchnorm.batch_slices(n, spec.batch_size):
            idx = order[s]
            x, y = prepared.inputs[idx], prepared.targets[idx]
            if spec.augment:
                x = crop_flip(x, gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.amp):
                output = module(x)
                losses = adapter.loss(output, y).to(dtype)
            loss = losses.mean()
            if not bool(torch.isfinite(loss)):
                diverged_at = epoch + 1
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(losses.detach().sum())
            ok = adapter.correct(output.detach(), y)
            correct += float(ok.sum()) if ok is not None else 0.0
        if diverged_at is not None:
            return _diverged(spec, meta, out, history, diverged_at, t_start, device)
        with torch.no_grad():
            params = dict(module.named_parameters())
            dist = float(sum(torch.sum((params[k] - start[k]) ** 2) for k in param_names)) ** 0.5
        history.append(
            {"epoch": epoch + 1, "loss": total / n, "accuracy": correct / n, "distance": dist}
        )
        if on_epoch is not None:
            on_epoch(epoch + 1, spec.epochs, total / n, correct / n)
        if spec.until_loss is not None and total / n < spec.until_loss:
            stopped_at = epoch + 1
            break
        # every K epochs, but not the last: its weights are final.safetensors
        every = spec.save_every
        if every is not None and (epoch + 1) % every == 0 and epoch + 1 < spec.epochs:
            kept.append(_keep_checkpoint(module, out, epoch + 1, meta))

    theta1 = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    # The final training loss as compare reports it at alpha = 1 (BN statistics re-estimated).
    module.eval()
    evaluator = PathEvaluator(adapter, module, theta1, theta1, prepared, EvalSpec(gauss=False))
    evaluator.set_alpha(1.0)
    final_loss, final_acc = evaluator.loss_and_accuracy()
    save_checkpoint(out / FINAL_FILE, theta1, {**meta, "role": "final"})
    test_accuracy = _test_accuracy(test, adapter, module, device, dtype)
    record = {
        "status": "complete",
        "stopped_at_epoch": stopped_at,
        "final_test_accuracy": test_accuracy,
        "config": spec.to_dict(),
        "arch_options": meta["arch_options"],
        "final_train_loss": final_loss,
        "final_train_accuracy": final_acc,
        "history": history,
        "checkpoints": kept,
        "wall_time_s": time.perf_counter() - t_start,
        "device": str(device),
        "versions": {
            "mliscan": __version__,
            "torch": torch.__version__,
            "numpy": __import__("numpy").__version__,
            "python": platform.python_version(),
        },
    }
    atomic_write_json(out / RUN_FILE, record)
    return record


def finished_run(out: Path) -> dict[str, Any] | None:
    """The record of the finished run (complete or diverged) in ``out``; None when there
    is none (an empty or new folder, an interrupted run, an unreadable run.json)."""
    try:
        record = read_json(out / RUN_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in ("complete", "diverged"):
        return None
    return record


# Settings that change no number of a run (they are not part of its identity either).
_INERT = frozenset(
    f.name for f in dataclasses.fields(TrainSpec) if (o := option_of(f)) and not o.numeric
)


def run_differences(record: dict[str, Any], spec: TrainSpec) -> list[str]:
    """Each setting of ``spec`` that differs from the finished run ``record``, as ``lr
    0.1 there, 0.01 here`` (nested settings dotted: ``data.limit``); settings that change
    no number (the device, --save-every) are not differences."""
    config = record.get("config")
    old = _flat(config if isinstance(config, dict) else {})
    new = _flat(json.loads(json.dumps(spec.to_dict())))
    keys = [k for k in dict.fromkeys([*new, *old]) if k.split(".")[0] not in _INERT]
    return [
        f"{k} {_shown(old, k)} there, {_shown(new, k)} here"
        for k in keys
        if old.get(k, _UNSET) != new.get(k, _UNSET)
    ]


_UNSET = object()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _shown(d: dict[str, Any], key: str) -> str:
    value = d.get(key, _UNSET)
    return "unset" if value is _UNSET or value is None else str(value)[:40]


def _remove_run(out: Path, record: dict[str, Any]) -> None:
    """The files of a finished run being replaced (--overwrite): its record first (the
    folder is then an unfinished run), its final weights and the checkpoints it kept."""
    checkpoints = record.get("checkpoints")
    kept = checkpoints if isinstance(checkpoints, list) else []
    names = [RUN_FILE, FINAL_FILE]
    names += [c["file"] for c in kept if isinstance(c, dict) and isinstance(c.get("file"), str)]
    for name in names:
        path = out / name
        if is_safe_relative(name) and name.count("/") <= 1 and path.is_file():
            path.unlink()


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` inside the block, restored after.

    A float64 run draws its initial weights in float64: drawn in float32, they can differ by
    one float32 rounding step between CPUs (torch's per-CPU kernels round ``low + (high -
    low) * u`` with or without a fused multiply-add; measured: 7e-9 in 4 of the 6 weight and
    bias tensors of the digits MLP), which training then amplifies."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _keep_checkpoint(
    module: torch.nn.Module, out: Path, epoch: int, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write the weights after ``epoch`` to ``checkpoints/epoch-<epoch>.safetensors``."""
    name = checkpoint_name(epoch)
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    save_checkpoint(out / name, state, {**meta, "role": "checkpoint", "epoch": epoch})
    return {"epoch": epoch, "file": name}


def _test_split(spec: TrainSpec) -> Any:
    """The test split, when the dataset declares one (``DatasetInfo.test_split``)."""
    if spec.data.name is None or not has_test_split(spec.data.name):
        return None
    return load_dataset(dataclasses.replace(spec.data, split="test", limit=None))


def _diverged(
    spec: TrainSpec,
    meta: dict[str, Any],
    out: Path,
    history: list[dict[str, float]],
    epoch: int,
    t_start: float,
    device: torch.device,
) -> dict[str, Any]:
    """The record of a run whose training loss became NaN/Inf in ``epoch`` (no final)."""
    record = {
        "status": "diverged",
        "diverged_at_epoch": epoch,
        "config": spec.to_dict(),
        "arch_options": meta["arch_options"],
        "history": history,
        "wall_time_s": time.perf_counter() - t_start,
        "device": str(device),
        "versions": {"mliscan": __version__, "torch": torch.__version__},
    }
    atomic_write_json(out / RUN_FILE, record)
    return record


def _test_accuracy(
    test: Any, adapter: Any, module: torch.nn.Module, device: torch.device, dtype: torch.dtype
) -> float | None:
    """Accuracy on the test split, when the dataset declares one (else None)."""
    if test is None:
        return None
    data = prepare_data(adapter, test.inputs, test.targets, device, dtype)
    module.eval()
    correct = 0.0
    with torch.inference_mode():
        for s in batchnorm.batch_slices(len(data), 1024):
            ok = adapter.correct(module(data.inputs[s]), data.targets[s])
            if ok is None:
                return None
            correct += float(ok.sum())
    return correct / len(data)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crops of zero-padded images and random horizontal flips (the CIFAR recipe)."""
    if x.ndim != 4:
        raise UsageError("--augment needs image inputs [N, C, H, W]")
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    flip = (torch.rand(n, generator=gen) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    idx = [i for i in range(n) if flip[i]]
    if idx:
        out[idx] = out[idx].flip(-1)
    return out
