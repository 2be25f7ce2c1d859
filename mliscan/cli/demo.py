"""``mliscan demo``: train two digits MLPs and compare them (bundled data, no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypedDict

import typer

if TYPE_CHECKING:
    from mliscan.train import TrainSpec


class DemoRun(TypedDict):
    """The settings in which the two demo runs differ (the others are shared)."""

    optimizer: Literal["sgd", "adam"]
    lr: float
    batch_size: int
    arch_options: dict[str, Any]


# SGD without batch norm stays monotonic; Adam with batch norm at a large learning rate
# travels far from its initialisation and is not monotonic (Sections 4.1-4.2 of the paper).
DEMO_RUNS: tuple[tuple[str, DemoRun], ...] = (
    ("sgd", {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "arch_options": {"bn": False}}),
    ("adam-bn", {"optimizer": "adam", "lr": 0.05, "batch_size": 256, "arch_options": {"bn": True}}),
)
# The demo prints the same table on every CPU and thread count: the README shows it and
# tests/test_readme.py checks it. CPUs and thread counts sum in different orders, and Adam +
# BN training amplifies the rounding differences. Measured (two runs at 1 and 2 threads):
# at batch size 32 (lr 0.03) by about 10x every 1.5 epochs, so even float64 runs that agree
# to 1e-15 at epoch 3 differ by 5% in distance from epoch 36; at batch size 256 by about
# 1e4 over the 60 epochs, which float32 (rounding near 1e-7) turns into 0.7% in distance and
# 2x in the final loss, and float64 into 2e-13. So both runs train in float64 (which draws
# the initial weights in float64 as well) and both paths are evaluated in float64: the 1-,
# 2- and 4-thread tables are identical, also with torch's kernels for another CPU
# (ATEN_CPU_CAPABILITY=default or avx2, MKL_ENABLE_INSTRUCTIONS=AVX2), where the weights
# end within 1e-11 of each other.
DEMO_DTYPE: Final = "float64"


def demo(
    out: Annotated[Path, typer.Option(help="Where the two runs are written.")] = Path("demo-runs"),
    epochs: Annotated[int, typer.Option(help="Training epochs per run.")] = 60,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> int:
    """Train an SGD MLP and an Adam+BN MLP on the bundled digits, then compare both paths.

    Examples:

      mliscan demo

      mliscan demo --out /tmp/demo --epochs 20
    """
    from mliscan.cli import ui
    from mliscan.paths import atomic_write_json
    from mliscan.plots import plot_curves
    from mliscan.runners.pair import PairStudy, run_pair
    from mliscan.spec import DataSpec, EvalSpec
    from mliscan.train import TrainSpec, train

    records = []
    for name, settings in DEMO_RUNS:
        run_dir = out / name
        spec = TrainSpec(
            arch="mlp", data=DataSpec("digits"), epochs=epochs, seed=0, dtype=DEMO_DTYPE, **settings
        )
        if finished_with(run_dir, spec):
            ui.err.print(f"{run_dir}: already trained with these settings (reused)")
        else:
            with ui.epoch_progress(epochs, f"train {name}", quiet) as cb:
                train(spec, run_dir, on_epoch=cb)
        with ui.alpha_progress(50, f"compare {name}", quiet) as cb:
            study = PairStudy(
                str(run_dir / "init.safetensors"),
                str(run_dir / "final.safetensors"),
                eval=EvalSpec(dtype=DEMO_DTYPE),
            )
            result = run_pair(study, cb)
        record = result.record().replace(label=f"{name} (lr {settings['lr']})")
        atomic_write_json(run_dir / "mli.json", record.to_json())
        records.append(record)
    ui.out.print(ui.results_table(records, title="mliscan demo: digits MLPs, 50 alphas"))
    plot_curves(records, out / "curves.png")
    ui.wrote(*(out / name / "mli.json" for name, _ in DEMO_RUNS), out / "curves.png")
    return 0


def finished_with(folder: Path, spec: TrainSpec) -> bool:
    """Whether ``folder`` holds a finished run of exactly ``spec`` (then it is reused)."""
    import json

    from mliscan.sweep import is_complete

    if not is_complete(folder):
        return False
    try:
        config = json.loads((folder / "run.json").read_text()).get("config")
    except (OSError, json.JSONDecodeError):
        return False
    return config == json.loads(json.dumps(spec.to_dict()))
