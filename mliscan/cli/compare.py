"""``mliscan compare INIT FINAL``: the MLI report of one init/final pair."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mliscan.cli import options as o
from mliscan.cli.errors import EXIT_GATE, EXIT_OK


def compare(
    init: Annotated[
        str,
        typer.Argument(
            help="Initial checkpoint: a file (.safetensors, .pt/.bin) or folder, hf:ORG/NAME[@REV], "
            "timm:NAME[.TAG] or init:SOURCE[?seed=S]."
        ),
    ],
    final: Annotated[
        str,
        typer.Argument(metavar="FINAL", help="Trained checkpoint (same forms), same architecture."),
    ],
    arch: o.Arch = None,
    hidden: o.Hidden = None,
    activation: o.Activation = None,
    bn: o.BN = None,
    init_scheme: o.InitScheme = None,
    arch_opt: o.ArchOpt = None,
    data: o.Data = None,
    data_dir: o.DataDir = None,
    data_limit: o.DataLimit = None,
    data_file: o.DataFile = None,
    seq_len: o.SeqLen = None,
    max_tokens: o.MaxTokens = None,
    split: o.Split = "train",
    alphas: o.Alphas = o.DEFAULTS["alphas"],
    bn_batch_size: o.BnBatchSize = o.DEFAULTS["bn_batch_size"],
    bn_warmup_batches: o.BnWarmupBatches = None,
    bn_mode: o.BnMode = "exact",
    device: o.Device = "auto",
    dtype: o.Dtype = "float32",
    batch_size: o.BatchSize = None,
    tol: Annotated[
        float, typer.Option(help="Monotonic when min-Δ <= TOL (the paper's MLP tables used 1e-3).")
    ] = 0.0,
    no_gauss: Annotated[bool, typer.Option("--no-gauss", help="Skip the Gauss length.")] = False,
    amp: Annotated[
        str,
        typer.Option(
            help="off, bf16 or fp16: autocast the BN and loss passes (the Gauss pass keeps "
            "--dtype).",
            rich_help_panel=o.EVAL,
        ),
    ] = "off",
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the evaluation passes (speed only; the first alpha compiles).",
            rich_help_panel=o.EVAL,
        ),
    ] = False,
    gauss_examples: Annotated[
        int | None, typer.Option(help="Average the Gauss length over the first N examples.")
    ] = None,
    gauss_method: Annotated[
        str, typer.Option(help="auto (fast second-order pass where possible) or jvp (nested jvp).")
    ] = "auto",
    alpha_chunk: Annotated[
        int,
        typer.Option(
            help="Alphas per vmapped pass (GPU, small models; with BN only for the default "
            "--bn-batch-size all; 1: off).",
            rich_help_panel=o.EVAL,
        ),
    ] = 1,
    unrelated: Annotated[
        int,
        typer.Option(
            help="Also interpolate from K fresh initialisations (seeds 0..K-1) to FINAL (Figure 6).",
            metavar="K",
        ),
    ] = 0,
    unrelated_seed: Annotated[
        list[int] | None, typer.Option(help="Explicit seeds for --unrelated (repeatable).")
    ] = None,
    json_out: o.JsonOut = None,
    plot: o.PlotOut = None,
    fail_on_nonmonotonic: Annotated[
        bool, typer.Option("--fail-on-nonmonotonic", help="Exit 1 when the path is not monotonic.")
    ] = False,
    max_delta: Annotated[
        float | None, typer.Option(help="Exit 1 when min-Δ exceeds X.", metavar="X")
    ] = None,
    trust_pickle: o.TrustPickle = False,
    offline: o.Offline = False,
    quiet: o.Quiet = False,
) -> int:
    """Interpolate from INIT to FINAL: min-Δ, monotonicity, distance, Gauss length, barrier.

    Examples:

      mliscan compare runs/a/init.safetensors runs/a/final.safetensors

      mliscan compare init.pt final.pt --arch mlp --hidden 128,128 --data digits --json -

      mliscan compare i.safetensors f.safetensors --arch resnet20 --data cifar10 --data-dir ~/data --fail-on-nonmonotonic

      mliscan compare hf:EleutherAI/pythia-70m@step0 hf:EleutherAI/pythia-70m@step143000 --data text --data-file corpus.txt

      mliscan compare init:timm:resnet18 timm:resnet18.a1_in1k --data imagefolder --data-dir ~/imagenet-val --data-limit 512
    """
    from mliscan.errors import UsageError
    from mliscan.pipeline import compare_pair
    from mliscan.results import pair_to_dict, write_json
    from mliscan.spec import EvalSpec

    o.check_dtype(dtype)
    if gauss_method not in ("auto", "jvp"):
        raise UsageError(f"--gauss-method must be auto or jvp, got {gauss_method!r}")
    if alphas < 2:
        raise UsageError("--alphas must be at least 2 (the endpoints)")
    if split not in ("train", "test"):
        raise UsageError(f"--split must be train or test, got {split!r}")
    spec = EvalSpec(
        alphas=alphas,
        bn=o.bn_spec(bn_mode, bn_batch_size, bn_warmup_batches),
        gauss=not no_gauss,
        compile=compile_,
        amp=o.check_amp(amp),  # type: ignore[arg-type]
        gauss_examples=gauss_examples,
        gauss_method=gauss_method,  # type: ignore[arg-type]
        batch_size=batch_size,
        alpha_chunk=max(1, alpha_chunk),
        dtype=dtype,  # type: ignore[arg-type]
        device=device,
    )
    data_given = {
        "name": data,
        "data_dir": str(data_dir) if data_dir else None,
        "limit": data_limit,
        "split": split,
        "data_file": data_file,
        "seq_len": seq_len,
        "max_tokens": max_tokens,
    }
    given = o.arch_options(hidden, activation, bn, init_scheme, arch_opt)

    from mliscan.cli import ui

    label = final if final.startswith(("hf:", "timm:", "init:")) else Path(final).name
    with ui.alpha_progress(alphas, label, quiet) as progress:
        result = compare_pair(
            init,
            final,
            arch=arch,
            arch_options=given,
            data=data_given,
            spec=spec,
            tolerance=tol,
            progress=progress,
            unrelated_seeds=list(unrelated_seed or range(unrelated)),
            trust_pickle=trust_pickle,
            offline=offline,
        )
    record = pair_to_dict(result)
    record["label"] = label
    to_stdout = json_out == "-"
    console = ui.err if to_stdout else ui.out
    console.print(ui.result_table(record))
    if record["nonfinite_alphas"]:
        bad = record["nonfinite_alphas"]
        ui.err.print(
            f"[yellow]warning:[/] the loss is NaN/Inf at {len(bad)} alphas (first at α={bad[0]:.3g}): "
            "the path diverges there; min-Δ and barrier are undefined"
        )
    if record["unrelated"]:
        u = record["unrelated"]
        console.print(
            f"unrelated initialisations ({len(u['seeds'])}): monotonic share "
            f"{ui.fmt(u['monotonic_share'])}, mean curve {ui.sparkline(u['mean_loss'], 50)}"
        )
    for note in result.notes:
        ui.err.print(f"[yellow]note:[/] {note}")
    if json_out == "-":
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    elif json_out:
        write_json(json_out, record)
    if plot is not None:
        from mliscan.plots import plot_curves

        plot_curves([record], plot)
    return _gate(record, fail_on_nonmonotonic, max_delta)


def _gate(record: dict, fail_on_nonmonotonic: bool, max_delta: float | None) -> int:
    from mliscan.cli import ui

    failed = []
    delta = record["min_delta"]
    if fail_on_nonmonotonic and record["monotonic"] is not True:
        failed.append(f"not monotonic: min-Δ {ui.fmt(delta)} > tolerance {record['tolerance']}")
    if max_delta is not None and (delta is None or delta > max_delta):
        failed.append(f"min-Δ {ui.fmt(delta)} exceeds --max-delta {max_delta}")
    for f in failed:
        ui.err.print(f"[red]FAIL[/] {f}")
    return EXIT_GATE if failed else EXIT_OK
