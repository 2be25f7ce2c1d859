"""Any timm image classifier (``timm.create_model(NAME, pretrained=False)``).

The model name, class count and preprocessing come from the checkpoint folder's
``config.json`` as timm writes it to the Hub (``architecture``, ``num_classes``,
``pretrained_cfg``); for a bare weights file pass ``--arch timm --arch-opt model=NAME``.
Images come from ``--data imagefolder --data-dir DIR`` and are preprocessed with the model's
own pretrained evaluation transform (resize, centre crop, mean/std). Batch-norm statistics
are re-estimated at each alpha like any other BN model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mliscan.adapter import Adapter, DataHooks, DataInfo, head_classes, option
from mliscan.errors import AdapterOptionError

# Names under which timm classifiers keep their output layer, to read the class count.
_HEADS = ("fc.weight", "head.fc.weight", "classifier.weight", "head.weight", "last_linear.weight")


# create_model arguments that load or fetch weights or code: mliscan builds the architecture
# only (the weights come from the checkpoint), so a config.json may not set them.
LOADING_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def _json_object(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    text = str(value)
    if text and not isinstance(json.loads(text), dict):
        raise ValueError("must be a JSON object")
    return text


@dataclass(frozen=True)
class TimmOptions:
    model: str = option("", "timm architecture name, e.g. resnet18")
    num_classes: int = option(0, "classes of the head (0: read off the checkpoint)", int)
    pretrained_cfg: str = option(
        "",
        "timm pretrained config (JSON: input size, mean, std, crop) for preprocessing",
        _json_object,
    )
    model_args: str = option("", "extra create_model keyword arguments (JSON)", _json_object)


class TimmAdapter(Adapter):
    name = "timm"
    description = "any timm image classifier; images from --data imagefolder"
    default_data = "imagefolder"
    Options = TimmOptions
    trainable = False
    eval_batch_candidates = (16, 64, 256)

    def example(self) -> tuple[dict[str, Any], DataInfo]:
        return {"model": "test_resnet", "num_classes": 7}, DataInfo((3, 32, 32), 7)

    def claims_config(self, config: Mapping[str, Any]) -> bool:
        return "architecture" in config and "model_type" not in config

    def options_from_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"model": str(config["architecture"])}
        if "num_classes" in config:
            out["num_classes"] = int(config["num_classes"])
        if isinstance(config.get("pretrained_cfg"), dict):
            out["pretrained_cfg"] = json.dumps(config["pretrained_cfg"], sort_keys=True)
        if isinstance(config.get("model_args"), dict):
            out["model_args"] = json.dumps(config["model_args"], sort_keys=True)
        return out

    def infer_options(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return head_classes(tensors, _HEADS)

    def validate_options(self, options: TimmOptions) -> None:
        if not options.model:
            return  # checked at build time, where the message can say what to pass
        import timm

        if not timm.is_model(options.model.split(".")[0]):
            raise AdapterOptionError(f"--arch timm: timm has no model named {options.model!r}")
        args = json.loads(options.model_args) if options.model_args else {}
        loading = sorted(k for k in args if k in LOADING_ARGS)
        if loading:
            raise AdapterOptionError(
                f"timm model_args sets {', '.join(loading)}: mliscan builds the architecture "
                "only and reads the weights from the checkpoint; remove it from config.json "
                "(or --arch-opt model_args)"
            )

    def build(self, options: TimmOptions, data: DataInfo) -> nn.Module:
        import timm

        if not options.model:
            raise AdapterOptionError(
                "--arch timm needs the model name: a timm folder's config.json, or "
                "--arch-opt model=NAME"
            )
        kwargs = json.loads(options.model_args) if options.model_args else {}
        if options.num_classes:
            kwargs["num_classes"] = options.num_classes
        try:
            return timm.create_model(options.model.split(".")[0], pretrained=False, **kwargs)
        except TypeError as exc:  # a model_args key this architecture does not take
            raise AdapterOptionError(
                f"timm {options.model}: model_args {sorted(kwargs)} do not fit its "
                f"create_model ({' '.join(str(exc).split())[:160]})"
            ) from exc

    def data_hooks(self, options: TimmOptions, folder: Any) -> DataHooks:
        from timm.data import create_transform, resolve_data_config

        cfg = json.loads(options.pretrained_cfg) if options.pretrained_cfg else None
        if not cfg and options.model:
            import timm.models

            found = timm.models.get_pretrained_cfg(options.model)
            cfg = found.to_dict() if found is not None else None
        data_config = resolve_data_config(pretrained_cfg=cfg or {})
        return DataHooks(image_transform=create_transform(**data_config, is_training=False))
