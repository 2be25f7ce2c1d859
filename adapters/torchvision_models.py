"""torchvision's classifiers by name (``--arch torchvision --arch-opt model=resnet18``).

Built with ``torchvision.models.get_model(NAME, weights=None, num_classes=...)``: random
initial weights, no download. The class count is read off the checkpoint's head (or the
data); the input is any image data in torchvision's layout (CIFAR, an image folder with
ImageNet's preprocessing, or digits for very small models).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mliscan.adapter import Adapter, DataHooks, DataInfo, head_classes, option
from mliscan.errors import AdapterOptionError

# Names under which torchvision classifiers keep their output layer (the class count).
_HEADS = (
    "fc.weight",
    "classifier.6.weight",
    "classifier.1.weight",
    "classifier.3.weight",
    "classifier.weight",
    "heads.head.weight",
    "head.weight",
    "classifier.0.weight",
)


@dataclass(frozen=True)
class TorchvisionOptions:
    model: str = option("", "torchvision model name, e.g. resnet18, vgg11_bn, mobilenet_v3_small")
    num_classes: int = option(
        0, "classes of the head (0: read off the checkpoint or the data)", int
    )


class TorchvisionAdapter(Adapter):
    name = "torchvision"
    description = "any torchvision classifier by name (--arch-opt model=resnet18)"
    default_data = "cifar10"
    Options = TorchvisionOptions
    trainable = False
    eval_batch_candidates = (16, 64, 256)

    def example(self) -> tuple[dict[str, Any], DataInfo]:
        return {"model": "resnet18", "num_classes": 7}, DataInfo((3, 32, 32), 7)

    def infer_options(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return head_classes(tensors, _HEADS)

    def validate_options(self, options: TorchvisionOptions) -> None:
        if not options.model:
            return  # checked at build time, where the message can say what to pass
        from torchvision import models

        if options.model not in models.list_models():
            raise AdapterOptionError(
                f"--arch torchvision: torchvision has no model named {options.model!r} "
                "(torchvision.models.list_models() lists them)"
            )

    def build(self, options: TorchvisionOptions, data: DataInfo) -> nn.Module:
        from torchvision import models

        if not options.model:
            raise AdapterOptionError(
                "--arch torchvision needs --arch-opt model=NAME, e.g. resnet18"
            )
        classes = options.num_classes or data.num_classes or 1000
        return models.get_model(options.model, weights=None, num_classes=classes)

    def data_hooks(self, options: TorchvisionOptions, folder: Any) -> DataHooks:
        from torchvision import transforms

        return DataHooks(
            image_transform=transforms.Compose(
                [
                    transforms.Resize(256),
                    transforms.CenterCrop(224),
                    transforms.ToTensor(),
                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                ]
            )
        )
