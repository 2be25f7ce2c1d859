"""Permutation structure: which units of a network can be permuted without changing its
function, declared by each adapter (``Adapter.permutation_spec``) and used by weight matching
(:mod:`mliscan.align`).

``sequential_spec`` reads it off a plain ``nn.Sequential`` of Linear / Conv / BatchNorm /
activation / pooling / Flatten layers: every hidden layer's output units (channels) form one
group, which permutes that layer's output axis, the next layer's input axis (in blocks of H*W
after a Flatten) and the BatchNorm parameters and statistics between them. Architectures
with other structure (the CIFAR ResNets' residual stream) build their own with
:func:`whole`, :func:`add_conv` and :func:`add_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

import numpy as np
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
            add_norm(spec, name, m, current)
        elif isinstance(m, nn.Flatten):
            flattened_block = -1  # resolved by the next Linear's input width
        elif not isinstance(m, _PASS_THROUGH):
            raise UsageError(f"--align: layer {name} ({type(m).__name__}) has no permutation rule")
        if flattened_block == -1:
            nxt = next((n for n in islice(module, i + 1, None) if isinstance(n, nn.Linear)), None)
            if nxt is not None and channels:
                flattened_block = max(1, nxt.in_features // channels)
    return spec


def add_norm(spec: PermutationSpec, name: str, m: nn.Module, axis: AxisPerm) -> None:
    """A BatchNorm's parameters and statistics follow their channels (nothing for Identity)."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        for p in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, p, None) is not None:
                spec.axes[f"{name}.{p}"] = (axis,)


def add_conv(
    spec: PermutationSpec,
    name: str,
    m: nn.Linear | nn.Conv1d | nn.Conv2d,
    out: AxisPerm,
    inp: AxisPerm,
) -> None:
    spec.axes[f"{name}.weight"] = (out, inp, *(None,) * (m.weight.dim() - 2))
    if m.bias is not None:
        spec.axes[f"{name}.bias"] = (out,)
