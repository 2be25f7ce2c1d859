"""``mliscan check INIT FINAL``: an MLI gate for training repositories' CI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mliscan.cli import options as o
from mliscan.cli.errors import EXIT_GATE, EXIT_OK

# A fast default for CI: half the paper's alphas on at most 2048 examples.
CHECK_ALPHAS = 25
CHECK_DATA_LIMIT = 2048


def check(
    init: Annotated[str, typer.Argument(metavar="INIT", help="Initial checkpoint.")],
    final: Annotated[str, typer.Argument(metavar="FINAL", help="Trained checkpoint.")],
    max_delta: Annotated[
        float | None, typer.Option(help="Fail when min-Δ exceeds X.", metavar="X")
    ] = None,
    require_monotonic: Annotated[
        bool | None, typer.Option("--require-monotonic", help="Fail when min-Δ > --tol.")
    ] = None,
    max_gauss_length: Annotated[
        float | None,
        typer.Option(help="Fail when the average Gauss length exceeds X.", metavar="X"),
    ] = None,
    max_barrier: Annotated[
        float | None, typer.Option(help="Fail when the loss barrier exceeds X.", metavar="X")
    ] = None,
    min_final_accuracy: Annotated[
        float | None,
        typer.Option(help="Fail when the final training accuracy is below X.", metavar="X"),
    ] = None,
    tol: Annotated[
        float | None, typer.Option(help="Tolerance of --require-monotonic (default 0).")
    ] = None,
    arch: o.Arch = None,
    data: o.Data = None,
    data_dir: o.DataDir = None,
    data_limit: Annotated[
        int | None, typer.Option(help=f"Examples used (default {CHECK_DATA_LIMIT}).")
    ] = None,
    alphas: Annotated[int | None, typer.Option(help=f"Alphas (default {CHECK_ALPHAS}).")] = None,
    bn_batch_size: Annotated[
        str | None, typer.Option(help="BN re-estimation batch size or 'all'.")
    ] = None,
    device: o.Device = "auto",
    config: Annotated[
        Path | None,
        typer.Option(
            help="Settings file (default: [tool.mliscan.check] of pyproject.toml, or mliscan.toml)."
        ),
    ] = None,
    json_out: o.JsonOut = None,
    junit: Annotated[
        Path | None, typer.Option(help="Write a JUnit XML report (one testcase per threshold).")
    ] = None,
    trust_pickle: o.TrustPickle = False,
    quiet: o.Quiet = False,
) -> int:
    """Check MLI thresholds; exit 0 when all hold, 1 when one fails, 2 on bad input.

    Examples:

      mliscan check runs/init.safetensors runs/final.safetensors --require-monotonic --max-delta 0.01

      mliscan check init.safetensors final.safetensors --junit mli.xml   # thresholds from pyproject.toml
    """
    from mliscan.cli import ui
    from mliscan.errors import UsageError
    from mliscan.gates import evaluate, load_config, markdown_summary, read_config, write_junit
    from mliscan.pipeline import compare_pair
    from mliscan.results import pair_to_dict, write_json
    from mliscan.spec import EvalSpec

    if config is not None:
        if not config.is_file():
            raise UsageError(f"{config}: no such settings file")
        settings, source = read_config(config) or {}, config
    else:
        settings, source = load_config(Path.cwd())
    given: dict[str, Any] = {
        "max_delta": max_delta,
        "require_monotonic": require_monotonic,
        "max_gauss_length": max_gauss_length,
        "max_barrier": max_barrier,
        "min_final_accuracy": min_final_accuracy,
        "tol": tol,
        "arch": arch,
        "data": data,
        "data_dir": str(data_dir) if data_dir else None,
        "data_limit": data_limit,
        "alphas": alphas,
        "bn_batch_size": bn_batch_size,
    }
    s = {**settings, **{k: v for k, v in given.items() if v is not None}}
    limits = {
        k: s.get(k)
        for k in (
            "max_delta",
            "require_monotonic",
            "max_gauss_length",
            "max_barrier",
            "min_final_accuracy",
        )
    }
    if not any(v not in (None, False) for v in limits.values()):
        raise UsageError(
            "no threshold set: pass --require-monotonic, --max-delta, --max-gauss-length, --max-barrier "
            "or --min-final-accuracy (or set them in [tool.mliscan.check] of pyproject.toml)"
        )
    spec = EvalSpec(
        alphas=int(s.get("alphas", CHECK_ALPHAS)),
        bn=o.bn_spec("exact", str(s.get("bn_batch_size", o.DEFAULTS["bn_batch_size"])), None),
        gauss=limits["max_gauss_length"] is not None,
        device=device,
    )
    data_given = {
        "name": s.get("data"),
        "data_dir": s.get("data_dir"),
        "limit": int(s.get("data_limit", CHECK_DATA_LIMIT)),
    }
    t0 = time.perf_counter()
    with ui.alpha_progress(spec.alphas, "check", quiet) as progress:
        result = compare_pair(
            init,
            final,
            arch=s.get("arch"),
            data=data_given,
            spec=spec,
            tolerance=float(s.get("tol", 0.0)),
            progress=progress,
            trust_pickle=trust_pickle,
        )
    record = pair_to_dict(result)
    checks = evaluate(record, limits)
    record["checks"] = [c.__dict__ for c in checks]
    record["config"] = str(source) if source else None
    elapsed = time.perf_counter() - t0
    loss = [float("nan") if v is None else v for v in record["loss"]]
    spark = ui.sparkline(loss, 40)
    console = ui.err if json_out == "-" else ui.out
    for c in checks:
        mark = "[green]PASS[/]" if c.passed else "[red]FAIL[/]"
        console.print(f"{mark} {c.description}: observed {ui.fmt(c.observed)}, allowed {c.allowed}")
    console.print(
        f"loss {spark}  ({record['arch']}, {len(record['alphas'])} alphas, {elapsed:.1f}s)"
    )
    if json_out == "-":
        print(json.dumps(record, indent=2))
    elif json_out:
        write_json(json_out, record)
    if junit is not None:
        write_junit(junit, checks, record, elapsed)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown_summary(checks, record, spark))
    return EXIT_OK if all(c.passed for c in checks) else EXIT_GATE
