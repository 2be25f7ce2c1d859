"""Small convolutional classifiers: SimpleCNN and LeNet-5 (plain ``nn.Sequential``).

* ``simplecnn``: two 3x3 convolutions (32, 64 channels, stride 2, ReLU, optional BN) and a
  linear head.
* ``lenet5``: LeCun et al. (1998) for 28x28 or 32x32 inputs: conv 5x5 (6), tanh, average
  pooling, conv 5x5 (16), tanh, average pooling, 120-84-classes fully connected with tanh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mliscan.adapter import Adapter, DataInfo, TrainDefaults, option, parse_bool
from mliscan.permutation import sequential_spec


@dataclass(frozen=True)
class CNNOptions:
    bn: bool = option(False, "batch norm after each convolution", parse_bool)


def _flat_size(features: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(2, *shape)).flatten(1).shape[1])


class SimpleCNNAdapter(Adapter):
    permutation = staticmethod(sequential_spec)  # --align: hidden units of a Sequential
    name = "simplecnn"
    description = "two 3x3 stride-2 convolutions (32, 64) with ReLU and a linear head"
    default_data = "digits"
    example_data = DataInfo((1, 8, 8), 10)  # the digits' 8x8 images
    Options = CNNOptions
    train_defaults = TrainDefaults(optimizer="sgd", lr=0.05, epochs=50, batch_size=128)

    def build(self, options: CNNOptions, data: DataInfo) -> nn.Module:
        c = data.input_shape[0]
        layers: list[nn.Module] = []
        for cin, cout in ((c, 32), (32, 64)):
            layers.append(nn.Conv2d(cin, cout, 3, stride=2, padding=1))
            if options.bn:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
        layers.append(nn.Flatten())
        flat = _flat_size(nn.Sequential(*layers), data.input_shape)
        layers.append(nn.Linear(flat, data.num_classes))
        return nn.Sequential(*layers)


class LeNet5Adapter(Adapter):
    permutation = staticmethod(sequential_spec)  # --align: hidden units of a Sequential
    name = "lenet5"
    description = "LeNet-5 (LeCun et al. 1998): conv-tanh-avgpool x2, 120-84 tanh head"
    default_data = "mnist"
    Options = CNNOptions
    train_defaults = TrainDefaults(optimizer="sgd", lr=0.05, epochs=50, batch_size=128)

    def build(self, options: CNNOptions, data: DataInfo) -> nn.Module:
        c, h, _ = data.input_shape
        pad = 2 if h == 28 else 0  # 28x28 inputs are padded to the original 32x32
        layers: list[nn.Module] = [nn.Conv2d(c, 6, 5, padding=pad)]
        if options.bn:
            layers.append(nn.BatchNorm2d(6))
        layers += [nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5)]
        if options.bn:
            layers.append(nn.BatchNorm2d(16))
        layers += [nn.Tanh(), nn.AvgPool2d(2), nn.Flatten()]
        flat = _flat_size(nn.Sequential(*layers), data.input_shape)
        layers += [
            nn.Linear(flat, 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, data.num_classes),
        ]
        return nn.Sequential(*layers)


def _conv_block(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU())
    return layers


def _pool() -> nn.Module:
    # ceil_mode keeps 1x1 maps at 1x1, so small inputs (tests, digits) still pass through
    return nn.MaxPool2d(2, ceil_mode=True)


class AlexNetAdapter(Adapter):
    permutation = staticmethod(sequential_spec)  # --align: hidden units of a Sequential
    name = "alexnet"
    description = "AlexNet, CIFAR-sized: 5 conv (64-192-384-256-256), 3 max-pools, 1024-1024 head"
    default_data = "cifar10"
    Options = CNNOptions
    train_defaults = TrainDefaults(optimizer="sgd", lr=0.01, epochs=100, batch_size=128)

    def build(self, options: CNNOptions, data: DataInfo) -> nn.Module:
        c = data.input_shape[0]
        layers = [
            *_conv_block(c, 64, options.bn),
            _pool(),
            *_conv_block(64, 192, options.bn),
            _pool(),
        ]
        layers += [*_conv_block(192, 384, options.bn), *_conv_block(384, 256, options.bn)]
        layers += [*_conv_block(256, 256, options.bn), _pool(), nn.Flatten()]
        flat = _flat_size(nn.Sequential(*layers), data.input_shape)
        layers += [
            nn.Linear(flat, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, data.num_classes),
        ]
        return nn.Sequential(*layers)


VGG_CONFIGS = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ),
}


class VGGAdapter(Adapter):
    permutation = staticmethod(sequential_spec)  # --align: hidden units of a Sequential
    default_data = "cifar10"
    Options = CNNOptions
    train_defaults = TrainDefaults(optimizer="sgd", lr=0.01, epochs=200, batch_size=128)

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.name = f"vgg{depth}"
        self.description = (
            f"VGG{depth} (Simonyan & Zisserman 2015), CIFAR-sized: 3x3 convs, linear head"
        )

    def build(self, options: CNNOptions, data: DataInfo) -> nn.Module:
        layers: list[nn.Module] = []
        cin = data.input_shape[0]
        for v in VGG_CONFIGS[self.depth]:
            if v == "M":
                layers.append(_pool())
            else:
                layers += _conv_block(cin, int(v), options.bn)
                cin = int(v)
        layers.append(nn.Flatten())
        flat = _flat_size(nn.Sequential(*layers), data.input_shape)
        layers.append(nn.Linear(flat, data.num_classes))
        return nn.Sequential(*layers)


def vgg16() -> VGGAdapter:
    return VGGAdapter(16)


def vgg19() -> VGGAdapter:
    return VGGAdapter(19)
