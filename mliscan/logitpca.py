"""Figure 3: the logits of a few examples along the path, projected on their top two
principal components.

Each selected example contributes one logit vector per alpha (after batch-norm re-estimation
at that alpha, as for the loss). The PCA is fitted on all of those vectors together (centred,
SVD), so trajectories of different examples share one projection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mliscan.checkpoints import check_pair
from mliscan.errors import UsageError
from mliscan.evaluate import PathEvaluator, alpha_grid
from mliscan.pipeline import open_endpoint, setup
from mliscan.spec import ArchSpec, DataSpec, EvalSpec, SourceSpec


def pick_examples(labels: torch.Tensor, n: int) -> list[int]:
    """The first ``n`` examples taken round-robin over classes (balanced, deterministic)."""
    if labels.dim() != 1:
        raise UsageError("mliscan logits needs a classifier (one label per example)")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_class.setdefault(int(y), []).append(i)
    order: list[int] = []
    depth = 0
    while len(order) < n and any(depth < len(v) for v in by_class.values()):
        for c in sorted(by_class):
            if depth < len(by_class[c]) and len(order) < n:
                order.append(by_class[c][depth])
        depth += 1
    return order


def pca2(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project [A, E, D] onto the top two principal components of all A*E vectors:
    ([A, E, 2], explained variance ratio of each component)."""
    flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    if comps.shape[0] < 2:  # one-dimensional logits: pad with a zero axis
        comps = np.vstack([comps, np.zeros_like(comps)])
        s = np.concatenate([s, [0.0]])
    total = float((s**2).sum()) or 1.0
    explained = (s[:2] ** 2) / total
    return (centred @ comps.T).reshape(*z.shape[:2], 2), explained


def logit_trajectories(
    init_path: str,
    final_path: str,
    *,
    arch: ArchSpec | str | None = None,
    arch_options: Mapping[str, Any] | None = None,
    data: DataSpec | Mapping[str, Any] | None = None,
    spec: EvalSpec | None = None,
    examples: int = 10,
    trust_pickle: bool = False,
    offline: bool = False,
    ema: bool = False,
) -> dict[str, Any]:
    spec = spec or EvalSpec(alphas=25, gauss=False)
    if examples < 1:
        raise UsageError("--examples must be at least 1")
    source = SourceSpec(trust_pickle=trust_pickle, offline=offline, ema=ema)
    init, final = open_endpoint(init_path, source), open_endpoint(final_path, source)
    check_pair(init, final)
    ctx = setup(init, arch, arch_options, data, spec, source)
    adapter = ctx.choice.adapter
    theta0, theta1 = ctx.state(init), ctx.state(final)
    evaluator = PathEvaluator(adapter, ctx.module, theta0, theta1, ctx.prepared, spec)
    chosen = pick_examples(ctx.prepared.targets.cpu(), examples)
    x = ctx.prepared.inputs[chosen]
    alphas = alpha_grid(spec.alphas)
    frames = []
    for alpha in alphas:
        evaluator.set_alpha(float(alpha))
        with torch.inference_mode():
            z = adapter.logits(ctx.module(x))
        if z.shape[0] != len(chosen):
            raise UsageError(
                f"--arch {adapter.name} gives {z.shape[0] // len(chosen)} logit vectors per "
                "example; mliscan logits needs one (a classifier)"
            )
        frames.append(z.double().cpu().numpy())
    stacked = np.stack(frames)  # [A, E, D]
    points, explained = pca2(stacked)
    return {
        "init": str(init.path),
        "final": str(final.path),
        "arch": adapter.name,
        "alphas": alphas.tolist(),
        "examples": chosen,
        "labels": [int(v) for v in ctx.prepared.targets.cpu()[chosen].tolist()],
        "explained_variance": explained.tolist(),
        "points": points,
    }
