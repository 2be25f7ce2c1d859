"""``mliscan compare INIT FINAL``: the MLI report of one init/final pair."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from mliscan import gates
from mliscan import spec as S
from mliscan.cli import spine
from mliscan.cli.errors import EXIT_GATE, EXIT_OK
from mliscan.paths import atomic_write_json
from mliscan.record import Note, PathRecord


@spine.command(
    "compare",
    S.SourceSpec,
    S.ArchSpec,
    S.DataSpec,
    S.EvalSpec,
    S.VerdictSpec,
    S.GateSpec,
    S.AlignSpec,
    spine.OutputSpec,
    rare=("unrelated_seed",),
)
def compare(
    init: Annotated[
        str,
        typer.Argument(
            metavar="INIT",
            help="Initial checkpoint: a file (.safetensors, .pt/.bin) or folder, hf:ORG/NAME[@REV], "
            "timm:NAME[.TAG] or init:SOURCE[?seed=S].",
        ),
    ],
    final: Annotated[
        str,
        typer.Argument(metavar="FINAL", help="Trained checkpoint (same forms), same architecture."),
    ],
    unrelated: Annotated[
        int,
        typer.Option(
            min=0,
            max=10_000,
            help="Also interpolate from K fresh initialisations (seeds 0..K-1) to FINAL (Figure 6).",
            metavar="K",
        ),
    ] = 0,
    unrelated_seed: Annotated[
        list[int] | None, typer.Option(help="Explicit seeds for --unrelated (repeatable).")
    ] = None,
    fail_on_nonmonotonic: Annotated[
        bool,
        typer.Option(
            "--fail-on-nonmonotonic",
            help="The same as --require-monotonic (kept for older scripts).",
            hidden=True,
        ),
    ] = False,
    *,
    specs: spine.Specs,
) -> int:
    """Interpolate from INIT to FINAL: min-Δ, monotonicity, distance, Gauss length, barrier.

    Examples:

      mliscan compare runs/a/init.safetensors runs/a/final.safetensors

      mliscan compare init.pt final.pt --arch mlp --hidden 128,128 --data digits --json -

      mliscan compare i.safetensors f.safetensors --arch resnet20 --data cifar10 --data-dir ~/data --require-monotonic

      mliscan compare hf:EleutherAI/pythia-70m@step0 hf:EleutherAI/pythia-70m@step143000 --data text --data-file corpus.txt

      mliscan compare init:timm:resnet18 timm:resnet18.a1_in1k --data imagefolder --data-dir ~/imagenet-val --data-limit 512
    """
    from mliscan.paths import check_local_source, run_label

    check_local_source(init)  # before torch is imported: a typo fails at once
    check_local_source(final)
    from mliscan.cli import ui
    from mliscan.runners.pair import PairStudy, run_pair

    ev, gate, out = specs[S.EvalSpec], specs[S.GateSpec], specs[spine.OutputSpec]
    if fail_on_nonmonotonic:
        gate = gate.replace(require_monotonic=True)
    label = pair_label(init, final, run_label)
    said: list[Note] = []

    def heard(note: Note) -> None:
        said.append(note)
        print_note(note)

    with ui.alpha_progress(ev.alphas, label, out.quiet) as progress:
        study = PairStudy(
            init,
            final,
            source=specs[S.SourceSpec],
            arch=specs[S.ArchSpec],
            data=specs[S.DataSpec],
            eval=ev,
            verdict=specs[S.VerdictSpec],
            align=specs[S.AlignSpec],
            unrelated_seeds=tuple(unrelated_seed or range(unrelated)),
        )
        result = run_pair(study, progress, on_note=heard)
    record = result.record().replace(label=label)
    to_stdout = out.json_out == "-"
    console = ui.err if to_stdout else ui.out
    console.print(ui.result_table(record))
    bad = record.nonfinite_alphas
    if bad:
        ui.err.print(
            f"[yellow]warning:[/] the loss is NaN/Inf at {len(bad)} alphas (first at α={bad[0]:.3g}): "
            "the path diverges there; min-Δ and barrier are undefined"
        )
    if record.unrelated:
        u = record.unrelated
        console.print(
            f"unrelated initialisations ({len(u['seeds'])}): monotonic share "
            f"{ui.fmt(u['monotonic_share'])}, mean curve {ui.sparkline(u['mean_loss'], 50)}"
        )
    for note in result.notes:
        if note not in said:  # those known before the evaluation were said then
            print_note(note)
    checks = gates.evaluate(record, gate)
    write_outputs(record, out, {"checks": [c.__dict__ for c in checks]} if checks else {})
    failed = [c for c in checks if not c.passed]
    for c in failed:
        ui.err.print(
            f"[red]FAIL[/] {c.description}: observed {ui.fmt(c.observed)}, allowed {c.allowed}"
        )
    return EXIT_GATE if failed else EXIT_OK


def print_note(note: Note) -> None:
    """A note of the result on stderr: a warning where the endpoints or the statistics look
    wrong (``note.warning``: its kind says so)."""
    from mliscan.cli import ui

    kind = "warning" if note.warning else "note"
    ui.err.print(f"[yellow]{kind}:[/] {ui.escape(note.text)}")


def write_outputs(
    record: PathRecord, out: spine.OutputSpec, extra: Mapping[str, Any] | None = None
) -> None:
    """The path's record as JSON (a file, or '-' for stdout; ``extra`` keys after the
    record's, such as the gate's checks) and its curve as a figure."""
    from mliscan.cli import ui

    data = {**record.to_json(), **(extra or {})}
    if out.json_out == "-":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif out.json_out:
        atomic_write_json(out.json_out, data)
        ui.wrote(out.json_out)
    if out.plot is not None:
        from mliscan.plots import plot_curves

        plot_curves([record], Path(out.plot))
        ui.wrote(out.plot)


def pair_label(init: str, final: str, run_label: Callable[[str], str]) -> str:
    """The pair's name in tables and figures: the run folder when both files are its init
    and final, else ``init-label → final-label``."""
    a, b = run_label(init), run_label(final)
    if a.endswith("/init") and b.endswith("/final") and a[:-5] == b[:-6]:
        return a[:-5]
    return f"{a} → {b}"
