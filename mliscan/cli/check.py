"""``mliscan check INIT FINAL``: an MLI gate for training repositories' CI."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
from mliscan.cli.errors import EXIT_GATE, EXIT_OK

# A fast default for CI: half the paper's alphas on at most 2048 examples, no Gauss length
# unless a threshold needs it.
CHECK_ALPHAS = 25
CHECK_DATA_LIMIT = 2048


@spine.command(
    "check",
    S.SourceSpec,
    S.ArchSpec,
    S.DataSpec,
    S.EvalSpec,
    S.VerdictSpec,
    S.GateSpec,
    spine.OutputSpec,
    defaults={"alphas": CHECK_ALPHAS, "data_limit": CHECK_DATA_LIMIT, "gauss": False},
)
def check(
    init: Annotated[str, typer.Argument(metavar="INIT", help="Initial checkpoint.")],
    final: Annotated[str, typer.Argument(metavar="FINAL", help="Trained checkpoint.")],
    junit: Annotated[
        Path | None,
        typer.Option(
            help="Write a JUnit XML report (one testcase per threshold).",
            metavar="PATH",
            rich_help_panel=S.OUT,
        ),
    ] = None,
    *,
    specs: spine.Specs,
) -> int:
    """Check MLI thresholds; exit 0 when all hold, 1 when one fails, 2 on bad input.

    Examples:

      mliscan check runs/init.safetensors runs/final.safetensors --require-monotonic --max-delta 0.01

      mliscan check init.safetensors final.safetensors --junit mli.xml   # thresholds from pyproject.toml

      mliscan check init.pt final.pt --arch mlp --hidden 128,128 --max-barrier 0.05
    """
    from mliscan.cli import ui
    from mliscan.cli.compare import pair_label, print_note, write_outputs
    from mliscan.errors import UsageError
    from mliscan.gates import evaluate, markdown_summary, write_junit
    from mliscan.paths import check_local_source, run_label

    gate, out = specs[S.GateSpec], specs[spine.OutputSpec]
    if not gate.any_threshold():
        raise UsageError(
            "no threshold set: pass --require-monotonic, --max-delta, --max-gauss-length, "
            "--max-barrier or --min-final-accuracy (or set them in [tool.mliscan.check] of "
            "pyproject.toml)"
        )
    if junit is not None and junit.is_dir():
        raise UsageError(f"--junit {junit} is a folder; name a file")
    check_local_source(init)  # before torch is imported: a typo fails at once
    check_local_source(final)
    from mliscan.runners.pair import PairStudy, run_pair  # torch: once the inputs look right

    ev = specs[S.EvalSpec]
    if gate.max_gauss_length is not None and not ev.gauss:
        ev = ev.replace(gauss=True)  # the threshold needs the number
    t0 = time.perf_counter()
    with ui.alpha_progress(ev.alphas, "check", out.quiet) as progress:
        study = PairStudy(
            init,
            final,
            source=specs[S.SourceSpec],
            arch=specs[S.ArchSpec],
            data=specs[S.DataSpec],
            eval=ev,
            verdict=specs[S.VerdictSpec],
        )
        result = run_pair(study, progress, on_note=print_note)  # a swapped pair: said first
    record = result.record().replace(label=pair_label(init, final, run_label))
    checks = evaluate(record, gate)
    extra = {
        "checks": [c.__dict__ for c in checks],
        "config": str(specs.config) if specs.config else None,
    }
    elapsed = time.perf_counter() - t0
    loss = [float("nan") if v is None else v for v in record.loss]
    spark = ui.sparkline(loss, 40)
    console = ui.err if out.json_out == "-" else ui.out
    for c in checks:
        mark = "[green]PASS[/]" if c.passed else "[red]FAIL[/]"
        console.print(
            f"{mark} {ui.escape(c.description)}: observed {ui.fmt(c.observed)}, allowed {c.allowed}"
        )
    console.print(
        f"loss {spark}  ({ui.escape(str(record.arch))}, {len(record.alphas)} alphas, "
        f"{elapsed:.1f}s)"
    )
    write_outputs(record, out, extra)
    if junit is not None:
        write_junit(junit, checks, record, elapsed)
        ui.wrote(junit)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown_summary(checks, record, spark))
    return EXIT_OK if all(c.passed for c in checks) else EXIT_GATE
