"""Permutation alignment of two endpoints before interpolating (weight matching).

Hidden units can be permuted without changing the function a network computes; much of the
barrier between independently trained optima is this symmetry (Entezari et al. 2022;
Ainsworth et al., "Git Re-Basin", ICLR 2023). Weight matching finds, for each group of
permutable units, the permutation of the second endpoint whose weights best match the
first's: a linear assignment per group (``scipy.optimize.linear_sum_assignment``), iterated
over the groups until no permutation changes.

The permutation structure is declared by the adapter (``Adapter.permutation``, built with
:mod:`mliscan.permutation`): this module knows no architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mliscan.adapter import Adapter
from mliscan.errors import UsageError
from mliscan.permutation import AxisPerm, PermutationSpec, Segment

MAX_ITERATIONS = 100


def _expand(perm: np.ndarray, block: int) -> np.ndarray:
    """A channel permutation acting on flattened features (blocks of ``block``)."""
    if block <= 1:
        return perm
    return (perm[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def _index(axis: tuple[Segment, ...], perms: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    """The gather index of one axis: position pos[i] takes what sat at pos[perm[i]]."""
    index = np.arange(size)
    for g, pos in axis:
        index[pos] = pos[perms[g]]
    return index


def _permuted(
    t: torch.Tensor,
    axes: tuple[AxisPerm, ...],
    perms: Mapping[str, np.ndarray],
    block: int,
    skip: int | None = None,
) -> torch.Tensor:
    for a, segments in enumerate(axes):
        if segments is None or a == skip:
            continue
        width = block if a == 1 else 1
        index = _expand(_index(segments, perms, t.shape[a] // width), width)
        t = t.index_select(a, torch.as_tensor(index, device=t.device))
    return t


def weight_matching(
    spec: PermutationSpec,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    seed: int = 0,
    objective: Sequence[str] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Permutations of ``b``'s groups that best match ``a`` (iterated linear assignment)
    over the tensors named in ``objective`` (default: every permuted floating tensor);
    returns (permutation per group, iterations)."""
    from scipy.optimize import linear_sum_assignment

    perms = {g: np.arange(n) for g, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    names = _objective_names(spec, a, objective)
    iterations = 0
    for iterations in range(1, MAX_ITERATIONS + 1):  # noqa: B007 - the count is returned
        changed = False
        for g in rng.permutation(sorted(perms)):
            n = spec.sizes[g]
            score = torch.zeros(n, n, dtype=torch.float64)
            for k in names:
                axes = spec.axes[k]
                block = spec.blocks.get(k, 1)
                for axis, segments in enumerate(axes):
                    for group, pos in segments or ():
                        if group != g:
                            continue
                        wa = a[k].double()
                        wb = _permuted(b[k].double(), axes, perms, block, skip=axis)
                        width = block if axis == 1 else 1
                        rows = torch.as_tensor(pos)
                        wa = wa.movedim(axis, 0).reshape(-1, width, *wa.movedim(axis, 0).shape[1:])
                        wb = wb.movedim(axis, 0).reshape(-1, width, *wb.movedim(axis, 0).shape[1:])
                        wa = wa[rows].reshape(n, -1)
                        wb = wb[rows].reshape(n, -1)
                        score += (wa @ wb.T).cpu()
            s = score.numpy()
            _, cols = linear_sum_assignment(s, maximize=True)
            old = s[np.arange(n), perms[g]].sum()
            new = s[np.arange(n), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[g] = cols
                changed = True
        if not changed:
            break
    return perms, iterations


def _objective_names(
    spec: PermutationSpec, a: Mapping[str, torch.Tensor], objective: Sequence[str] | None
) -> list[str]:
    allowed = None if objective is None else set(objective)
    return [
        k
        for k in spec.axes
        if k in a and a[k].is_floating_point() and (allowed is None or k in allowed)
    ]


def matching_objective(
    spec: PermutationSpec,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    perms: Mapping[str, np.ndarray],
    objective: Sequence[str] | None = None,
) -> float:
    """What weight matching maximises: sum over the objective tensors of <a, P b>."""
    total = 0.0
    for k in _objective_names(spec, a, objective):
        pb = _permuted(b[k].double(), spec.axes[k], perms, spec.blocks.get(k, 1))
        total += float((a[k].double() * pb).sum())
    return total


def apply(
    spec: PermutationSpec, state: Mapping[str, torch.Tensor], perms: Mapping[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """``state`` with every declared axis permuted (the same function, other unit order)."""
    out = dict(state)
    for k, axes in spec.axes.items():
        if k in out:
            out[k] = _permuted(out[k], axes, perms, spec.blocks.get(k, 1)).contiguous()
    return out


def aligned_architectures() -> list[str]:
    """The registered adapters that declare a permutation structure."""
    from mliscan.registry import get_adapter, names

    out = []
    for name in names():
        try:
            if get_adapter(name).permutation is not None:
                out.append(name)
        except Exception:  # a plugin that fails to load is reported elsewhere
            continue
    return out


def align(
    adapter: Adapter,
    module: nn.Module,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    objective: Sequence[str] | str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``b`` aligned to ``a`` by weight matching over the permutation structure the adapter
    declares (``Adapter.permutation``), and the record of what was done. ``objective``: the
    tensors whose match is maximised (default: the module's parameters; the BN running
    statistics are re-estimated along the path, so they are left out)."""
    if adapter.permutation is None:
        raise UsageError(
            f"--align: --arch {adapter.name} declares no permutation structure (aligned: "
            f"{', '.join(aligned_architectures())})"
        )
    spec = adapter.permutation(module)
    if objective is None:  # the parameters: BN statistics are re-estimated on the path
        objective = [name for name, _ in module.named_parameters()]
    elif objective == "with-statistics":  # --bn-mode interpolate: the statistics move too
        objective = [name for name, _ in module.named_parameters()] + [
            f"{prefix}.{stat}" if prefix else stat
            for prefix, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
            for stat in ("running_mean", "running_var")
        ]
    perms, iterations = weight_matching(spec, a, b, objective=objective)
    moved = int(sum((p != np.arange(len(p))).sum() for p in perms.values()))
    identity = {g: np.arange(n) for g, n in spec.sizes.items()}
    return apply(spec, b, perms), {
        "method": "weight-matching",
        "iterations": iterations,
        "groups": len(perms),
        "units_moved": moved,
        "objective": "sum of <theta_0, P theta_T> over "
        + (
            "the parameters"
            if set(objective) <= {n for n, _ in module.named_parameters()}
            else "the parameters and the interpolated BN statistics"
        ),
        "objective_before": matching_objective(spec, a, b, identity, objective),
        "objective_after": matching_objective(spec, a, b, perms, objective),
        "permutations": {g: [int(i) for i in p] for g, p in sorted(perms.items())},
    }
