"""The deep fully-connected MNIST autoencoder of the paper's reconstruction experiments.

Encoder 784-1000-500-250-30 and the mirrored decoder, as a plain ``nn.Sequential`` (Linear,
[BatchNorm1d], activation, ..., with a linear 30-unit code and a linear output). The loss is
the squared error summed over pixels, averaged over examples; the "logits" whose curve the
Gauss length measures are the reconstructions. There is no accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mliscan.adapters.mlp import ACTIVATIONS
from torch import nn

from mliscan.adapter import (
    Adapter,
    DataInfo,
    TrainDefaults,
    option,
    parse_bool,
    parse_choice,
    parse_int_tuple,
)
from mliscan.permutation import sequential_spec


@dataclass(frozen=True)
class AutoencoderOptions:
    encoder: tuple[int, ...] = option(
        (1000, 500, 250, 30), "encoder widths; the decoder mirrors them", parse_int_tuple
    )
    activation: str = option("relu", "relu, tanh or gelu", parse_choice(*ACTIVATIONS))
    bn: bool = option(False, "BatchNorm1d after each hidden Linear", parse_bool)


class AutoencoderAdapter(Adapter):
    permutation = staticmethod(sequential_spec)  # --align: hidden units of a Sequential
    targets_from_inputs = True  # the loss reconstructs the input
    name = "autoencoder"
    description = (
        "deep MNIST autoencoder 784-1000-500-250-30 (mirrored decoder), summed squared error"
    )
    default_data = "mnist"
    Options = AutoencoderOptions
    train_defaults = TrainDefaults(optimizer="adam", lr=1e-3, epochs=100, batch_size=128)

    def build(self, options: AutoencoderOptions, data: DataInfo) -> nn.Module:
        width = math.prod(data.input_shape)
        sizes = [width, *options.encoder, *reversed(options.encoder[:-1]), width]
        code = len(options.encoder)  # index of the code layer's output in `sizes`
        layers: list[nn.Module] = []
        for i in range(1, len(sizes)):
            layers.append(nn.Linear(sizes[i - 1], sizes[i]))
            if i in (code, len(sizes) - 1):
                continue  # linear code and linear output
            if options.bn:
                layers.append(nn.BatchNorm1d(sizes[i]))
            layers.append(ACTIVATIONS[options.activation]())
        return nn.Sequential(*layers)

    def prepare_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.flatten(1)

    def prepare_targets(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return inputs

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((output - target) ** 2).sum(dim=1)

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        return None
