"""Permutation alignment of two endpoints before interpolating (weight matching).

Hidden units can be permuted without changing the function a network computes; much of the
barrier between independently trained optima is this symmetry (Entezari et al. 2022;
Ainsworth et al., "Git Re-Basin", ICLR 2023). Weight matching finds, for each group of
permutable units, the permutation of the second endpoint whose weights best match the
first's: a linear assignment per group (``scipy.optimize.linear_sum_assignment``), iterated
over the groups until no permutation changes.

The permutation structure is declared by the adapter (``Adapter.permutation``); for
``"sequential"`` it is read off a plain ``nn.Sequential`` of Linear / Conv / BatchNorm /
activation / pooling / Flatten layers: every hidden layer's output units (channels) form
one group, which permutes that layer's output axis, the next layer's input axis (in blocks
of H*W after a Flatten) and the BatchNorm parameters and statistics between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mliscan.errors import UsageError

# Layers that act elementwise or per channel without parameters: they keep the grouping.
_PASS_THROUGH = (
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
)
MAX_ITERATIONS = 100


Segment = tuple[str, np.ndarray]
"""A group and the positions along an axis it permutes (the group's unit i sits at pos[i])."""
AxisPerm = tuple[Segment, ...] | None
"""How one axis of a tensor is permuted: by segments (None: not permuted)."""


def whole(group: str, n: int) -> tuple[Segment, ...]:
    """An axis of ``n`` units permuted entirely by ``group``."""
    return ((group, np.arange(n)),)


@dataclass
class PermutationSpec:
    """Groups of permutable units and, per tensor, how each axis is permuted.

    An axis usually belongs to one group; the CIFAR ResNets' residual stream after a
    zero-padding shortcut is made of several: the previous stage's stream (embedded at an
    offset) and the new, zero-padded channels."""

    sizes: dict[str, int] = field(default_factory=dict)
    axes: dict[str, tuple[AxisPerm, ...]] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)
    """Tensor -> block size of its axis 1 (a Linear after a Flatten of channels)."""


def sequential_spec(module: nn.Module) -> PermutationSpec:
    """The permutation structure of a plain ``nn.Sequential`` (see the module docstring)."""
    if not isinstance(module, nn.Sequential):
        raise UsageError("--align needs a plain nn.Sequential network for this architecture")
    spec = PermutationSpec()
    weighted = [i for i, m in enumerate(module) if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    if not weighted:
        raise UsageError("--align: the network has no Linear or Conv layers to align")
    last = weighted[-1]
    current: AxisPerm = None  # how the current feature / channel axis is permuted
    channels = 0
    flattened_block = 1
    for i, m in enumerate(module):
        name = str(i)
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            n_out = m.weight.shape[0]
            out: AxisPerm = None if i == last else whole(f"P{i}", n_out)
            extra = (None,) * (m.weight.dim() - 2)
            spec.axes[f"{name}.weight"] = (out, current, *extra)
            if isinstance(m, nn.Linear) and flattened_block > 1 and current is not None:
                spec.blocks[f"{name}.weight"] = flattened_block
            if m.bias is not None:
                spec.axes[f"{name}.bias"] = (out,)
            if out is not None:
                spec.sizes[f"P{i}"] = n_out
            current, channels, flattened_block = out, n_out, 1
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            _norm(spec, name, m, current)
        elif isinstance(m, nn.Flatten):
            flattened_block = -1  # resolved by the next Linear's input width
        elif not isinstance(m, _PASS_THROUGH):
            raise UsageError(f"--align: layer {name} ({type(m).__name__}) has no permutation rule")
        if flattened_block == -1:
            nxt = next(
                (module[j] for j in range(i + 1, len(module)) if isinstance(module[j], nn.Linear)),
                None,
            )
            if nxt is not None and channels:
                flattened_block = max(1, nxt.in_features // channels)
    return spec


def _norm(spec: PermutationSpec, name: str, m: nn.Module, axis: AxisPerm) -> None:
    """A BatchNorm's parameters and statistics follow their channels (nothing for Identity)."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        for p in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, p, None) is not None:
                spec.axes[f"{name}.{p}"] = (axis,)


def _conv(spec: PermutationSpec, name: str, m: nn.Module, out: AxisPerm, inp: AxisPerm) -> None:
    spec.axes[f"{name}.weight"] = (out, inp, *(None,) * (m.weight.dim() - 2))
    if m.bias is not None:
        spec.axes[f"{name}.bias"] = (out,)


def cifar_resnet_spec(module: nn.Module) -> PermutationSpec:
    """The permutation structure of the CIFAR ResNets (``adapters/resnet.py``).

    The residual stream is one permutation shared by the stem, every block's output and the
    next block's input. An option-A shortcut places the previous stream at channels
    ``pad//2 ..`` of a wider one and fills the rest with zeros, so the wider stream's
    permutation is the previous one at that offset plus a free permutation of the
    zero-padded channels (any other would change the function). Inside a block, the first
    convolution's channels are a group of their own. Fixup's scalar biases and multipliers
    are not permuted."""
    blocks = getattr(module, "layers", None)
    if not all(hasattr(module, a) for a in ("conv1", "bn1", "fc")) or not isinstance(
        blocks, nn.Sequential
    ):
        raise UsageError("--align: the network is not a CIFAR ResNet of mliscan's resnet adapter")
    spec = PermutationSpec()
    width = module.conv1.weight.shape[0]
    spec.sizes["S"] = width
    stream = whole("S", width)
    _conv(spec, "conv1", module.conv1, stream, None)
    _norm(spec, "bn1", module.bn1, stream)
    for i, block in enumerate(blocks):
        p = f"layers.{i}"
        cout = block.conv1.weight.shape[0]
        inner = whole(f"B{i}", cout)
        spec.sizes[f"B{i}"] = cout
        if cout != width:  # a zero-padding shortcut: the stream widens
            lo = block.pad // 2
            zeros = np.r_[np.arange(lo), np.arange(lo + width, cout)]
            spec.sizes[f"Z{i}"] = len(zeros)
            stream = (*((g, pos + lo) for g, pos in stream), (f"Z{i}", zeros))
            out = stream
            block_in = tuple((g, pos - lo) for g, pos in stream[:-1])
        else:
            out = block_in = stream
        _conv(spec, f"{p}.conv1", block.conv1, inner, block_in)
        _norm(spec, f"{p}.bn1", block.bn1, inner)
        _conv(spec, f"{p}.conv2", block.conv2, out, inner)
        _norm(spec, f"{p}.bn2", block.bn2, out)
        width = cout
    spec.axes["fc.weight"] = (None, stream)
    return spec


STRUCTURES = {"sequential": sequential_spec, "cifar-resnet": cifar_resnet_spec}


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


def align(
    permutation: str | None,
    module: nn.Module,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    arch: str,
    objective: Sequence[str] | str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``b`` aligned to ``a`` by weight matching, and the record of what was done.
    ``objective``: the tensors whose match is maximised (default: the module's parameters;
    the BN running statistics are re-estimated along the path, so they are left out)."""
    if permutation not in STRUCTURES:
        raise UsageError(
            f"--align: --arch {arch} declares no permutation structure (aligned: mlp, "
            "autoencoder, simplecnn, lenet5, alexnet, vgg16, vgg19 and the CIFAR ResNets)"
        )
    spec = STRUCTURES[permutation](module)
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
