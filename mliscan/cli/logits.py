"""``mliscan logits INIT FINAL``: Figure 3, the logit trajectories of a few examples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine


@spine.command(
    "logits",
    S.SourceSpec,
    S.ArchSpec,
    S.DataSpec,
    S.EvalSpec,
    spine.OutputSpec,
    defaults={"alphas": 25, "gauss": False},
    exclude=("gauss", "gauss_examples", "gauss_method", "alpha_chunk", "compile", "amp", "plot"),
)
def logits(
    init: Annotated[
        str, typer.Argument(metavar="INIT", help="Initial checkpoint (file, folder or hub source).")
    ],
    final: Annotated[str, typer.Argument(metavar="FINAL", help="Trained checkpoint.")],
    examples: Annotated[
        int,
        typer.Option(
            min=1,
            max=10_000,
            help="Examples to follow, taken round-robin over the classes.",
            metavar="N",
        ),
    ] = 10,
    out: Annotated[
        Path,
        typer.Option(
            help="Figure path without suffix: OUT.png and OUT.svg are written.", metavar="PATH"
        ),
    ] = Path("logits"),
    *,
    specs: spine.Specs,
) -> int:
    """Project the logits of a few examples along the path onto two principal components.

    Examples:

      mliscan logits runs/a/init.safetensors runs/a/final.safetensors --examples 10 --out fig3

      mliscan logits init.pt final.pt --arch resnet20 --data cifar10 --data-dir ~/data --json -
    """
    import json
    import sys

    from mliscan.paths import check_local_source

    check_local_source(init)  # before torch is imported: a typo fails at once
    check_local_source(final)
    from mliscan import plots
    from mliscan.cli import ui
    from mliscan.logitpca import logit_trajectories
    from mliscan.paths import atomic_write_json

    source, json_out = specs[S.SourceSpec], specs[spine.OutputSpec].json_out
    spec = specs[S.EvalSpec]
    alphas = spec.alphas
    result = logit_trajectories(
        init,
        final,
        arch=specs[S.ArchSpec],
        data=specs[S.DataSpec],
        spec=spec,
        examples=examples,
        trust_pickle=source.trust_pickle,
        offline=source.offline,
        ema=source.ema,
    )
    written = plots.plot_logit_pca(
        result["points"], result["labels"], result["alphas"], result["explained_variance"], out
    )
    record = {**result, "points": result["points"].tolist(), "figures": [str(p) for p in written]}
    if json_out == "-":
        sys.stdout.write(json.dumps(record) + "\n")
    elif json_out:
        atomic_write_json(json_out, record)
    ev = result["explained_variance"]
    ui.err.print(
        f"{len(result['examples'])} examples x {alphas} alphas; PC1+PC2 explain "
        f"{ev[0] + ev[1]:.0%} of the logit variance"
    )
    ui.wrote(*written, *([json_out] if json_out not in (None, "-") else []))
    return 0
