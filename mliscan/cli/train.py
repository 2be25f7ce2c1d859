"""``mliscan train``: produce init/final pairs, one run or a resumable sweep."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mliscan.cli import options as o
from mliscan.cli import settings
from mliscan.cli.errors import EXIT_GATE
from mliscan.errors import UsageError

if TYPE_CHECKING:
    from mliscan.shard import ShardSpec
    from mliscan.train import TrainSpec

BN_VALUES = re.compile(r"^(on|off)(,(on|off))*$")


def normalise_bn_argv(argv: list[str]) -> list[str]:
    """``train --bn on,off`` (a sweep) next to the plain ``--bn`` flag: the value form is
    rewritten to ``--bn-values``, since one option cannot be both a flag and a value."""
    if "train" not in argv:
        return argv
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--bn" and i + 1 < len(argv) and BN_VALUES.match(argv[i + 1]):
            out += ["--bn-values", argv[i + 1]]
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


@settings.own_settings(
    "train",
    rare=(
        "activation",
        "init_scheme",
        "arch_opt",
        "seq_len",
        "switch_optimizer",
        "switch_at",
        "augment",
        "amp",
        "max_runs",
        "slurm_time",
        "slurm_array_parallelism",
        "detach",
    ),
)
def train(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            help="Run folder; for a sweep, the folder holding one run-<hash> folder per run."
        ),
    ],
    arch: Annotated[
        str, typer.Option(help="Architecture adapter (see `mliscan adapters`).")
    ] = "mlp",
    hidden: o.Hidden = None,
    activation: Annotated[
        str | None, typer.Option(help="MLP activation(s): relu, tanh, gelu; a list sweeps.")
    ] = None,
    bn: o.BN = None,
    bn_values: Annotated[
        str | None,
        typer.Option(
            "--bn-values",
            help="Batch norm on, off or on,off (also spelled --bn on,off).",
            hidden=True,
        ),
    ] = None,
    init_scheme: Annotated[
        str | None, typer.Option(help="ResNet initialisation(s): default, block-identity, fixup.")
    ] = None,
    arch_opt: o.ArchOpt = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset (digits and tinytext are bundled).",
            show_default="the architecture's: digits, or tinytext for lstm-lm/transformer-lm",
        ),
    ] = None,
    data_dir: o.DataDir = None,
    data_limit: o.DataLimit = None,
    seq_len: o.SeqLen = None,
    optimizer: Annotated[
        str, typer.Option(help="sgd, adam or rmsprop; a list (sgd,adam) sweeps.")
    ] = "sgd",
    lr: Annotated[
        str, typer.Option(help="Learning rate(s), e.g. 0.1 or 0.001,0.01,0.1,1.")
    ] = "0.1",
    momentum: Annotated[str, typer.Option(help="SGD momentum value(s).")] = "0",
    weight_decay: Annotated[str, typer.Option(help="Weight decay value(s).")] = "0",
    epochs: Annotated[int, typer.Option(help="Passes over the training set (at most).")] = 100,
    until_loss: Annotated[
        float | None,
        typer.Option(help="Stop once an epoch's training loss is below X.", metavar="X"),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 128,
    seed: o.Seed = 0,
    seeds: Annotated[
        str | None, typer.Option(help="Seeds to sweep, e.g. 0-2 or 0,3,5 (overrides --seed).")
    ] = None,
    switch_optimizer: Annotated[
        str | None, typer.Option(help="Switch to this optimizer at --switch-at (Appendix C.4).")
    ] = None,
    switch_at: Annotated[int | None, typer.Option(help="Epoch of the optimizer switch.")] = None,
    augment: Annotated[
        bool,
        typer.Option("--augment", help="Random crop + horizontal flip of training images (CIFAR)."),
    ] = False,
    amp: Annotated[
        bool, typer.Option("--amp", help="Mixed precision (bfloat16 autocast) for training steps.")
    ] = False,
    save_every: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Keep the weights every K epochs as checkpoints/epoch-<k>.safetensors "
            "(for `mliscan trajectory`).",
            metavar="K",
        ),
    ] = None,
    device: o.Device = "cpu",
    quiet: o.Quiet = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Train again the runs that diverged (by default a diverged run is a result "
            "and reruns skip it); with --launcher, submit only the shards with such runs or "
            "unfinished ones.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Train again in place of a finished run of other settings in --out (by "
            "default it is refused, naming what differs).",
        ),
    ] = False,
    max_runs: Annotated[
        int,
        typer.Option(
            min=1,
            help="Refuse sweeps with more runs than this (a typo in --seeds 0-30000000 would "
            "otherwise hang).",
        ),
    ] = 10_000,
    shard: o.Shard = None,
    launcher: o.Launcher = "none",
    shards: o.Shards = None,
    slurm_partition: o.SlurmPartition = None,
    slurm_gpus_per_task: o.SlurmGpusPerTask = None,
    slurm_time: o.SlurmTime = None,
    slurm_array_parallelism: o.SlurmArrayParallelism = None,
    detach: o.Detach = False,
) -> int:
    """Train models, saving each initialisation before the first step and the final weights.

    List-valued options expand to a cartesian product of runs (a sweep); rerunning the same
    command skips finished runs (complete, or diverged: its loss became NaN/Inf) and
    restarts interrupted ones. Exit 1 when a single run diverges.

    Examples:

      mliscan train --out runs/adam-bn --optimizer adam --lr 0.03 --bn --batch-size 32

      mliscan train --out runs/ --optimizer sgd,adam --lr 0.001,0.01,0.1,1 --bn on,off --seeds 0-2 --epochs 600 --until-loss 0.01

      mliscan train --out runs/lstm --arch lstm-lm --data wikitext2 --data-dir ~/data --optimizer sgd,adam --lr 0.001,0.01 --epochs 40

      mliscan compare runs/adam-bn/init.safetensors runs/adam-bn/final.safetensors

      mliscan train --out runs/traj --optimizer adam --lr 0.01 --epochs 30 --save-every 5

      mliscan train --out runs/ --optimizer sgd,adam --lr 0.01,0.1 --seeds 0-2 --launcher slurm --slurm-partition gpu --slurm-gpus-per-task 1 --device cuda
    """
    from mliscan.cli import ui
    from mliscan.registry import arch_spec, get_adapter
    from mliscan.shard import ShardLog, ShardSpec
    from mliscan.spec import DataSpec
    from mliscan.sweep import (
        expand,
        finished_with,
        is_diverged,
        parse_list,
        parse_onoff,
        parse_seeds,
        run_sweep,
        sweep_size,
    )
    from mliscan.train import TrainSpec
    from mliscan.train import train as run_train

    cluster = ShardSpec(
        shard=shard,
        launcher=launcher,
        shards=shards,
        slurm_partition=slurm_partition,
        slurm_gpus_per_task=slurm_gpus_per_task,
        slurm_time=slurm_time,
        slurm_array_parallelism=slurm_array_parallelism,
        detach=detach,
        retry_failed=retry_failed,
    )
    flags: dict[str, Any] = {"hidden": hidden, "bn": bn}  # fields arch_spec() adds per flag
    given = arch_spec()(**flags, arch_opt=tuple(arch_opt or ())).given_options()
    data = data or get_adapter(arch).default_data
    base = TrainSpec(
        arch=arch,
        arch_options=given,
        data=DataSpec(
            name=data,
            data_dir=str(data_dir) if data_dir else None,
            limit=data_limit,
            seq_len=seq_len,
        ),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        until_loss=until_loss,
        switch_optimizer=switch_optimizer,  # type: ignore[arg-type]  # the spec checks the name
        switch_at=switch_at,
        augment=augment,
        amp=amp,
        device=device,
        save_every=save_every,
    )
    axes: dict[str, Sequence[Any]] = {
        "optimizer": parse_list(optimizer, str, "--optimizer"),
        "lr": parse_list(lr, float, "--lr"),
        "momentum": parse_list(momentum, float, "--momentum"),
        "weight_decay": parse_list(weight_decay, float, "--weight-decay"),
        "seed": parse_seeds(seeds) if seeds is not None else [seed],
    }
    if bn_values is not None:
        axes["arch_options.bn"] = parse_onoff(bn_values)
    if activation is not None:
        axes["arch_options.activation"] = parse_list(activation, str, "--activation")
    if init_scheme is not None:
        axes["arch_options.init"] = parse_list(init_scheme, str, "--init-scheme")
    size = sweep_size(axes)
    if size > max_runs:
        raise UsageError(
            f"the sweep has {size} runs, more than --max-runs {max_runs}; check the lists "
            "(e.g. --seeds 0-2 is three seeds) or raise --max-runs"
        )
    specs = expand(base, axes)
    if cluster.launcher != "none":
        from mliscan.cli import launch

        return launch.submit(
            cluster, "train", out, ctx, units=len(specs), pending=_pending(cluster, specs, out)
        )
    part = cluster.resolve()
    if len(specs) == 1 and not part.owns(0):
        ui.err.print(f"train: shard {part.label} has no run (the sweep has one); nothing to do")
        return 0

    if len(specs) == 1:  # one run: the folder is --out itself
        if finished_with(out, specs[0], retry_failed):
            diverged = is_diverged(out)
            ui.err.print(
                f"{ui.escape(str(out))}: already trained with these settings ("
                + ("diverged; --retry-failed trains it again" if diverged else "complete")
                + "); nothing to do"
            )
            return EXIT_GATE if diverged else 0
        with ui.epoch_progress(epochs, str(out), quiet) as on_epoch:
            record = run_train(specs[0], out, on_epoch=on_epoch, overwrite=overwrite)
        if record["status"] == "diverged":
            ui.err.print(
                f"[red]diverged[/]: the training loss became NaN/Inf in epoch "
                f"{record['diverged_at_epoch']}; {ui.escape(str(out / 'run.json'))} records it "
                "(lower --lr?)"
            )
            ui.wrote(out / "init.safetensors", out / "run.json")
            return EXIT_GATE
        ui.err.print(
            f"trained {ui.escape(str(arch))} in {record['wall_time_s']:.1f}s: final training loss "
            f"{ui.fmt(record['final_train_loss'])} (the whole training set, eval mode), "
            f"accuracy {ui.fmt(record['final_train_accuracy'])}"
        )
        ui.wrote(out / "init.safetensors", out / "final.safetensors", out / "run.json")
        return 0

    skipped = 0
    mine = part.size(len(specs))
    with (
        ShardLog(out, part, "train", len(specs)) as log,
        ui.sweep_progress(mine, epochs, quiet) as (show_run, on_epoch),
    ):

        def on_run(i: int, n: int, spec: TrainSpec, folder: Path, done: bool) -> None:
            nonlocal skipped
            skipped += done
            if show_run is not None:
                label = describe_run(spec)
                show_run(i, n, label, done)

        folders = run_sweep(
            specs,
            out,
            on_run=on_run,
            on_epoch=on_epoch,
            retry_failed=retry_failed,
            shard=part,
            on_done=lambda folder, trained: log.unit(trained),
        )
    n_diverged = sum(is_diverged(f) for i, f in enumerate(folders) if part.owns(i))
    what = "sweep complete" if part.whole else f"shard {part.label} of the sweep complete"
    ui.err.print(
        f"{what}: {mine} runs in {ui.escape(str(out))} ({skipped} were "
        "already done" + (f"; {n_diverged} diverged" if n_diverged else "") + ")"
    )
    if not part.whole:
        left = sum(not finished_with(f, s) for f, s in zip(folders, specs, strict=True))
        ui.err.print(
            f"{len(specs) - left} of the sweep's {len(specs)} runs are finished"
            + (f"; {left} are other shards' or unfinished" if left else "")
        )
    ui.wrote(out / "index.md", out / "runs.parquet")
    return 0


def _pending(cluster: ShardSpec, specs: list[TrainSpec], out: Path) -> list[int] | None:
    """With --retry-failed, the shards that own a run left to train (unfinished, or
    diverged: --retry-failed trains those again)."""
    from mliscan.sweep import finished_with, run_name

    if not cluster.retry_failed:
        return None
    count = cluster.shards or len(specs)
    return sorted(
        {
            i % count
            for i, s in enumerate(specs)
            if not finished_with(out / run_name(s), s, retry_failed=True)
        }
    )


def describe_run(spec: object) -> str:
    """A sweep run's settings in a few words: ``adam lr 0.01 bn=on seed 2``."""
    options = " ".join(
        f"{k}={'on' if v is True else 'off' if v is False else v}"
        for k, v in sorted(getattr(spec, "arch_options", {}).items())
    )
    parts = [getattr(spec, "optimizer", ""), f"lr {getattr(spec, 'lr', 0):g}", options]
    parts.append(f"seed {getattr(spec, 'seed', 0)}")
    return " ".join(p for p in parts if p)
