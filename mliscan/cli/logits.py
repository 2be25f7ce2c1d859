"""``mliscan logits INIT FINAL``: Figure 3, the logit trajectories of a few examples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mliscan.cli import options as o


def logits(
    init: Annotated[str, typer.Argument(help="Initial checkpoint (file, folder or hub source).")],
    final: Annotated[str, typer.Argument(metavar="FINAL", help="Trained checkpoint.")],
    arch: o.Arch = None,
    arch_opt: o.ArchOpt = None,
    data: o.Data = None,
    data_dir: o.DataDir = None,
    data_limit: o.DataLimit = None,
    examples: Annotated[
        int, typer.Option(help="Examples to follow, taken round-robin over the classes.")
    ] = 10,
    alphas: Annotated[int, typer.Option(help="Points along the path.")] = 25,
    out: Annotated[
        Path, typer.Option(help="Figure path without suffix: OUT.png and OUT.svg are written.")
    ] = Path("logits"),
    json_out: o.JsonOut = None,
    device: o.Device = "auto",
    trust_pickle: o.TrustPickle = False,
    offline: o.Offline = False,
) -> int:
    """Project the logits of a few examples along the path onto two principal components.

    Examples:

      mliscan logits runs/a/init.safetensors runs/a/final.safetensors --examples 10 --out fig3

      mliscan logits init.pt final.pt --arch resnet20 --data cifar10 --data-dir ~/data --json -
    """
    import json
    import sys

    from mliscan import plots
    from mliscan.cli import ui
    from mliscan.errors import UsageError
    from mliscan.paths import atomic_write_json
    from mliscan.spec import EvalSpec
    from mliscan.trajectory import logit_trajectories

    if alphas < 2:
        raise UsageError("--alphas must be at least 2 (the endpoints)")
    result = logit_trajectories(
        init,
        final,
        arch=arch,
        arch_options=o.arch_options(None, None, None, None, arch_opt),
        data={"name": data, "data_dir": str(data_dir) if data_dir else None, "limit": data_limit},
        spec=EvalSpec(alphas=alphas, gauss=False, device=device),
        examples=examples,
        trust_pickle=trust_pickle,
        offline=offline,
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
        f"{ev[0] + ev[1]:.0%} of the logit variance -> {', '.join(map(str, written))}"
    )
    return 0
