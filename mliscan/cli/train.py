"""``mliscan train``: produce an init/final pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan.cli import options as o


def train(
    out: Annotated[
        Path, typer.Option(help="Run folder: init.safetensors, final.safetensors, run.json.")
    ],
    arch: Annotated[
        str, typer.Option(help="Architecture adapter (see `mliscan adapters`).")
    ] = "mlp",
    hidden: o.Hidden = None,
    activation: o.Activation = None,
    bn: o.BN = None,
    init_scheme: o.InitScheme = None,
    arch_opt: o.ArchOpt = None,
    data: Annotated[str, typer.Option(help="Dataset (digits is bundled).")] = "digits",
    data_dir: o.DataDir = None,
    data_limit: o.DataLimit = None,
    optimizer: Annotated[str, typer.Option(help="sgd, adam or rmsprop.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.0,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 0.0,
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 128,
    seed: o.Seed = 0,
    device: o.Device = "cpu",
    quiet: o.Quiet = False,
) -> int:
    """Train a model, saving its initialisation before the first step and its final weights.

    Examples:

      mliscan train --out runs/sgd --optimizer sgd --lr 0.1 --epochs 100

      mliscan train --out runs/adam-bn --optimizer adam --lr 0.1 --bn --hidden 128,128

      mliscan compare runs/adam-bn/init.safetensors runs/adam-bn/final.safetensors
    """
    from mliscan.cli import ui
    from mliscan.spec import DataSpec
    from mliscan.train import TrainSpec
    from mliscan.train import train as run_train

    spec = TrainSpec(
        arch=arch,
        arch_options=o.arch_options(hidden, activation, bn, init_scheme, arch_opt),
        data=DataSpec(name=data, data_dir=str(data_dir) if data_dir else None, limit=data_limit),
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    with ui.epoch_progress(epochs, str(out), quiet) as on_epoch:
        record = run_train(spec, out, on_epoch=on_epoch)
    ui.err.print(
        f"trained {arch} in {record['wall_time_s']:.1f}s: final training loss "
        f"{ui.fmt(record['final_train_loss'])}, accuracy {ui.fmt(record['final_train_accuracy'])} "
        f"-> {out}"
    )
    return 0
