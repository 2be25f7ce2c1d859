"""CIFAR ResNets of He et al. (2016): ResNet-20/32/44/56.

Three stages of n = (depth - 2) / 6 basic blocks with 16, 32, 64 channels; the shortcut that
changes shape is the parameter-free "option A" of the paper (stride-2 subsampling and zero
channel padding). Options follow Table 2 of Lucas et al.:

* ``bn`` on (BN) or off (NBN; convolutions then carry biases);
* ``init``: ``default`` (Kaiming-normal convolutions), ``block-identity`` (Goyal et al. 2017:
  each block's last BN gamma zeroed, or its last convolution when there is no BN), or
  ``fixup`` (Zhang et al. 2019: no BN, scalar biases and a multiplier per block, the first
  convolution of each branch scaled by L^(-1/2), the last zeroed, the classifier zeroed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from mliscan.adapters.flags import BN, INIT_SCHEME
from torch import nn
from torch.nn import functional as F

from mliscan.adapter import (
    Adapter,
    DataInfo,
    TrainDefaults,
    batch_norm_label,
    option,
    parse_bool,
    parse_choice,
)
from mliscan.errors import AdapterOptionError, UsageError
from mliscan.permutation import PermutationSpec, add_conv, add_norm, whole

if TYPE_CHECKING:  # rules are stated through the tracer the engine passes in
    from mliscan.taylor import Stack, Tracer

INITS = ("default", "block-identity", "fixup")


@dataclass(frozen=True)
class ResNetOptions:
    bn: bool = option(True, "batch norm after every convolution", parse_bool)
    init: str = option("default", "default, block-identity or fixup", parse_choice(*INITS))


class _Bias(nn.Module):
    """A learnt scalar added to its input (Fixup)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias

    def taylor_forward(self, t: Tracer, st: Stack) -> Stack:
        return t.shift(self, "bias", st)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bn: bool, fixup: bool) -> None:
        super().__init__()
        self.fixup = fixup
        bias = not bn and not fixup
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.stride = stride
        self.pad = cout - cin
        if fixup:
            self.bias1a, self.bias1b, self.bias2a, self.bias2b = (_Bias() for _ in range(4))
            self.scale = nn.Parameter(torch.ones(1))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixup:
            x = self.bias1a(x)
            out = F.relu(self.bias1b(self.conv1(x)))
            out = self.bias2b(self.conv2(self.bias2a(out)) * self.scale)
        else:
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))

    def taylor_forward(self, t: Tracer, x: Stack) -> Stack:
        """The same forward pass in second-order rules (mliscan.taylor): z, z', z''."""
        if self.fixup:
            x = t(self.bias1a, x)
            out = t.relu(t(self.bias1b, t(self.conv1, x)))
            out = t(self.bias2b, t.scale(self, "scale", t(self.conv2, t(self.bias2a, out))))
        else:
            out = t.relu(t(self.bn1, t(self.conv1, x)))
            out = t(self.bn2, t(self.conv2, out))
        return t.relu(t.add(out, t.linear(self.shortcut, x)))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int, bn: bool, fixup: bool):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=not bn and not fixup)
        self.bn1 = nn.BatchNorm2d(16) if bn else nn.Identity()
        self.bias1 = _Bias() if fixup else nn.Identity()
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, bn, fixup))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.bias2 = _Bias() if fixup else nn.Identity()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bias1(self.bn1(self.conv1(x))))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.bias2(x))

    def taylor_forward(self, t: Tracer, x: Stack) -> Stack:
        x = t.relu(t(self.bias1, t(self.bn1, t(self.conv1, x))))
        x = t(self.layers, x)
        x = t.linear(lambda v: F.adaptive_avg_pool2d(v, 1).flatten(1), x)
        return t(self.fc, t(self.bias2, x))


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
    # the parts checked above, as the CIFAR ResNet declares them
    conv1 = cast(nn.Conv2d, module.conv1)
    spec = PermutationSpec()
    width = conv1.weight.shape[0]
    spec.sizes["S"] = width
    stream = whole("S", width)
    add_conv(spec, "conv1", conv1, stream, None)
    add_norm(spec, "bn1", cast(nn.Module, module.bn1), stream)
    for i, block in enumerate(cast(Iterable[BasicBlock], blocks)):
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
        add_conv(spec, f"{p}.conv1", block.conv1, inner, block_in)
        add_norm(spec, f"{p}.bn1", block.bn1, inner)
        add_conv(spec, f"{p}.conv2", block.conv2, out, inner)
        add_norm(spec, f"{p}.bn2", block.bn2, out)
        width = cout
    spec.axes["fc.weight"] = (None, stream)
    return spec


class ResNetAdapter(Adapter):
    description = (
        "CIFAR ResNet (He et al. 2016); options bn on/off, init default/block-identity/fixup"
    )
    default_data = "cifar10"
    Options = ResNetOptions
    flags = (BN, INIT_SCHEME)
    train_defaults = TrainDefaults(optimizer="sgd", lr=0.1, epochs=200, batch_size=128)
    # --align: the residual stream shared across blocks, widened by zero-padding shortcuts
    permutation = staticmethod(cifar_resnet_spec)  # --align: the residual stream

    def __init__(self, depth: int) -> None:
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n + 2")
        self.depth = depth
        self.name = f"resnet{depth}"
        self.description = f"ResNet-{depth} for CIFAR (He et al. 2016); options bn, init"

    def validate_options(self, options: ResNetOptions) -> None:
        if options.init == "fixup" and options.bn:
            raise AdapterOptionError(
                f"--arch {self.name}: Fixup initialisation is for networks without batch norm; "
                "add --no-bn"
            )

    def report_label(self, options: Mapping[str, Any]) -> str:
        """Table 2's names: BN or NBN, then -I for block-identity or -F for Fixup."""
        suffix = {"block-identity": "-I", "fixup": "-F"}.get(options.get("init", "default"), "")
        return batch_norm_label(options) + suffix

    def build(self, options: ResNetOptions, data: DataInfo) -> nn.Module:
        if len(data.input_shape) != 3:
            raise AdapterOptionError(
                f"--arch {self.name} needs image inputs [C, H, W], got {data.input_shape}"
            )
        fixup = options.init == "fixup"
        net = CifarResNet(self.depth, data.input_shape[0], data.num_classes, options.bn, fixup)
        _initialise(net, options, n_blocks=len(net.layers))
        return net


def _initialise(net: CifarResNet, options: ResNetOptions, n_blocks: int) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    blocks = [b for b in net.layers if isinstance(b, BasicBlock)]
    if options.init == "block-identity":
        for b in blocks:
            last = cast(nn.BatchNorm2d, b.bn2) if options.bn else b.conv2
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)
    elif options.init == "fixup":
        for b in blocks:
            fan = b.conv1.weight.shape[0] * math.prod(b.conv1.weight.shape[2:])
            nn.init.normal_(b.conv1.weight, 0.0, math.sqrt(2.0 / fan) * n_blocks ** (-0.5))
            nn.init.zeros_(b.conv2.weight)
        nn.init.zeros_(net.fc.weight)
        nn.init.zeros_(net.fc.bias)


def resnet20() -> ResNetAdapter:
    return ResNetAdapter(20)


def resnet32() -> ResNetAdapter:
    return ResNetAdapter(32)


def resnet44() -> ResNetAdapter:
    return ResNetAdapter(44)


def resnet56() -> ResNetAdapter:
    return ResNetAdapter(56)
