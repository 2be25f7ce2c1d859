"""Fully-connected classifier: a plain ``torch.nn.Sequential``.

Layout: Linear, [BatchNorm1d], activation, ..., final Linear, so its keys are ``0.weight``,
``0.bias``, ... exactly as in the most common hand-written MLP, and such checkpoints load
directly. Inputs are flattened once, before the sequence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from mliscan.adapters.flags import ACTIVATION, BN, HIDDEN
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

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@dataclass(frozen=True)
class MLPOptions:
    hidden: tuple[int, ...] = option((128, 128), "hidden widths, e.g. 128,128", parse_int_tuple)
    activation: str = option("relu", "relu, tanh or gelu", parse_choice(*ACTIVATIONS))
    bn: bool = option(False, "BatchNorm1d after each hidden Linear", parse_bool)


class MLPAdapter(Adapter):
    permutation = staticmethod(sequential_spec)  # --align: hidden units of a Sequential
    name = "mlp"
    description = "fully-connected classifier (Sequential of Linear, [BatchNorm1d], activation)"
    default_data = "digits"
    Options = MLPOptions
    flags = (HIDDEN, ACTIVATION, BN)
    example_data = DataInfo((1, 8, 8), 10)  # the digits' 8x8 images
    train_defaults = TrainDefaults(optimizer="sgd", lr=0.1, epochs=100, batch_size=128)

    def build(self, options: MLPOptions, data: DataInfo) -> nn.Module:
        layers: list[nn.Module] = []
        width = math.prod(data.input_shape)
        for h in options.hidden:
            layers.append(nn.Linear(width, h))
            if options.bn:
                layers.append(nn.BatchNorm1d(h))
            layers.append(ACTIVATIONS[options.activation]())
            width = h
        layers.append(nn.Linear(width, data.num_classes))
        return nn.Sequential(*layers)

    def prepare_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.flatten(1)

    def infer_options(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Hidden widths and batch norm, read off a Sequential MLP's keys and shapes."""
        linear: list[tuple[int, int]] = []
        bn = False
        for key, value in tensors.items():
            m = re.fullmatch(r"(\d+)\.(weight|running_mean)", key)
            if not m:
                continue
            if m.group(2) == "running_mean":
                bn = True
            elif value.ndim == 2:
                linear.append((int(m.group(1)), int(value.shape[0])))
        if not linear:
            return {}
        widths = [w for _, w in sorted(linear)]
        return {"hidden": tuple(widths[:-1]), "bn": bn}
