"""``MLITrainerCallback`` for the Hugging Face Trainer (mliscan's ``transformers`` extra).

    from mliscan.integrations.transformers import MLITrainerCallback
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[MLITrainerCallback(fail_on_nonmonotonic=True)])
    trainer.train()

At the start of training the callback keeps theta_0 (on the CPU) and reads its sample of at
most ``max_examples`` training examples (a batch it cannot read fails before training; the
sampling leaves the run's shuffling untouched). When training stops (after its last
optimizer step, before the report_to integrations close) it measures the straight path to
the trained weights and logs ``mli/min_delta``, ``mli/monotonic``, ``mli/distance``,
``mli/normalized_distance``, ``mli/barrier`` (and ``mli/gauss_length``) through the
Trainer's own ``log`` (its ``log_history`` and every ``report_to`` integration), whether the
callback was given to ``Trainer(callbacks=[...])``, added with ``trainer.add_callback`` or
``MLITrainerCallback.attach(trainer)``. Into ``args.output_dir`` it writes the pair as
``save_pretrained`` writes a model (its keys, tied weights once, ``config.json``, and the
tokenizer when the Trainer has one) named ``init.safetensors`` / ``final.safetensors``, plus
``mli.json``, so ``mliscan check OUT/init.safetensors OUT/final.safetensors`` gates it; at the
end of training it can fail the run (``MLIGateError``, on every process).

theta_0 travels with the Trainer's checkpoints (``checkpoint-N/mli-init.safetensors``), so
``trainer.train(resume_from_checkpoint=...)`` still measures from the initialisation. The
measurement runs on the world's process zero only; FSDP and DeepSpeed ZeRO-3, which shard
the parameters, are refused before training.

Batches are the Trainer's dicts: ``input_ids`` (with ``attention_mask`` when present) are
the inputs, ``labels`` the targets: class labels for a sequence classifier (cross-entropy
per example), token ids for a language model (mean token cross-entropy per sequence, -100
ignored).
"""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:  # the framework is an optional extra: a clear message when it is absent
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mliscan.integrations.transformers needs transformers and accelerate: "
        "pip install 'accelerate>=1.15' (or install mliscan with its [transformers] extra)"
    ) from exc

from mliscan.integrations.common import (
    DEFAULT_MAX_EXAMPLES,
    BatchFormatError,
    MLIGateError,
    MLISettings,
    ShardedStrategyError,
    contiguous,
    cpu_state,
    failure,
    measure,
    metrics_of,
    sample,
    sharded_refusal,
    tie_like,
    write_pair,
    write_record,
)

__all__ = ["MLIGateError", "MLITrainerCallback", "ShardedStrategyError"]

NAME = "MLITrainerCallback"
# theta_0 inside each checkpoint-N folder the Trainer saves (the model's own keys)
INIT_IN_CHECKPOINT = "mli-init.safetensors"


class Logits(nn.Module):
    """A transformers model as a module from token ids to logits: inputs [N, L], or
    [N, 2, L] with the attention mask stacked under the ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return self.model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
        return self.model(input_ids=x).logits


def _batch_inputs(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not hasattr(batch, "keys") or not {"input_ids", "labels"} <= set(batch.keys()):
        found = ", ".join(map(repr, batch.keys())) if hasattr(batch, "keys") else type(batch)
        raise BatchFormatError(
            f"{NAME} measures on batches with 'input_ids' and 'labels' (the Trainer's "
            f"dicts); a training batch has {found}"
        )
    ids = batch["input_ids"]
    x = torch.stack([ids, batch["attention_mask"]], dim=1) if "attention_mask" in batch else ids
    return x, batch["labels"]


def _sequence_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example loss: cross-entropy for class labels, mean token cross-entropy (the
    shifted next-token loss of a causal LM) for token labels."""
    if target.dim() == 1:
        return nn.functional.cross_entropy(output, target, reduction="none")
    logits, labels = output[:, :-1], target[:, 1:]
    ce = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        reduction="none",
        ignore_index=-100,
    ).view(labels.shape)
    counted = (labels != -100).sum(dim=1).clamp(min=1)
    return ce.sum(dim=1) / counted


def sharded_setup(args: Any, trainer: Any = None) -> str | None:
    """The name of the sharded-parameter setup a run uses (FSDP, DeepSpeed ZeRO-3), else
    None: from the Trainer when known, else from its arguments and accelerate's launcher."""
    if trainer is not None:
        if getattr(trainer, "is_fsdp_enabled", False):
            return "FSDP"
        plugin = getattr(getattr(trainer, "accelerator", None), "state", None)
        plugin = getattr(plugin, "deepspeed_plugin", None)
        if plugin is not None and getattr(plugin, "zero_stage", None) == 3:
            return "DeepSpeed ZeRO stage 3"
    env = os.environ
    if getattr(args, "fsdp_plugin_args", None) is not None or _true(env.get("ACCELERATE_USE_FSDP")):
        return "FSDP"
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled() or (
        _true(env.get("ACCELERATE_USE_DEEPSPEED"))
        and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    ):
        return "DeepSpeed ZeRO stage 3"
    return None


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _calling_trainer(callback: Any) -> Any:
    """The Trainer whose callback handler is calling ``callback``: a callback given to
    ``Trainer(callbacks=[...])`` is never handed its Trainer, and only ``Trainer.log``
    reaches the report_to integrations. Found on the call stack (``Trainer.train`` is
    there during ``on_train_begin``) and accepted only if it holds this very callback."""
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer) and any(
                cb is callback for cb in owner.callback_handler.callbacks
            ):
                return owner
            frame = frame.f_back
    finally:
        del frame
    return None


def write_pretrained(
    folder: Path, model: nn.Module, init: dict[str, torch.Tensor], processing_class: Any = None
) -> list[Path]:
    """init.safetensors and final.safetensors as ``save_pretrained`` writes the model (its
    keys, each tied weight once, its format reverted for the Hub), with ``config.json``
    (and the tokenizer, when given) beside them; a model without ``save_pretrained``
    gets its own state dict's keys."""
    if not hasattr(model, "save_pretrained"):
        return write_pair(folder, init, model)
    hub_model: Any = model  # a transformers PreTrainedModel (save_pretrained checked above)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(dir=folder, prefix=".mli-") as tmp:
        for role, state in (("init", dict(init)), ("final", None)):
            out = Path(tmp) / role
            hub_model.save_pretrained(out, state_dict=state)
            weights = out / "model.safetensors"
            if not weights.is_file():
                raise RuntimeError(
                    f"{NAME}: save_pretrained wrote {sorted(p.name for p in out.iterdir())}, "
                    "not one model.safetensors (a sharded or adapter-only model); save the "
                    "initial and final models yourself and run `mliscan compare` on them"
                )
            os.replace(weights, folder / f"{role}.safetensors")
            written.append(folder / f"{role}.safetensors")
        for extra in sorted((Path(tmp) / "final").iterdir()):  # config.json, generation_config
            os.replace(extra, folder / extra.name)
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(str(folder))
    return written


class MLITrainerCallback(TrainerCallback):
    """Measure MLI from the start of training to its end (see the module docstring)."""

    def __init__(
        self,
        *,
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        alphas: int = 25,
        gauss: bool = False,
        tol: float = 0.0,
        fail_on_nonmonotonic: bool = False,
        max_delta: float | None = None,
        loss: Any = None,
        out_dir: str | Path | None = None,
    ) -> None:
        self.settings = MLISettings(
            max_examples,
            alphas,
            gauss,
            tol,
            fail_on_nonmonotonic,
            max_delta,
            loss if loss is not None else _sequence_loss,
        )
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.trainer: Any = None
        self.init: dict[str, torch.Tensor] | None = None
        self.result: Any = None
        self.written: list[Path] = []
        self._data: Any = None
        self._measured_step: int | None = None

    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> MLITrainerCallback:
        """Create the callback and add it to ``trainer`` (the same as
        ``Trainer(callbacks=[MLITrainerCallback(...)])``)."""
        callback = cls(**kwargs)
        callback.trainer = trainer
        trainer.add_callback(callback)
        return callback

    def _refuse_sharded(self, args: Any) -> None:
        if (name := sharded_setup(args, self.trainer)) is not None:
            raise sharded_refusal(NAME, name)

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._refuse_sharded(args)  # at Trainer(...) when given there

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.trainer is None:
            self.trainer = _calling_trainer(self)
        self._refuse_sharded(args)
        self.result, self._measured_step, self.written = None, None, []
        if not state.is_world_process_zero:
            self.init = None  # only process zero measures
            return
        if train_dataloader is not None:  # the DataLoader under accelerate's wrapper
            loader = getattr(train_dataloader, "base_dataloader", train_dataloader)
            self._data = sample(loader, self.settings.max_examples, _batch_inputs, NAME)
        self.init = self._resumed_init(args, state, model) if state.global_step > 0 else None
        if self.init is None:
            self.init = cpu_state(model)

    def _resumed_init(self, args: Any, state: Any, model: nn.Module) -> Any:
        """theta_0 from the checkpoint folder being resumed (``checkpoint-N`` of the
        resumed step, or ``args.resume_from_checkpoint``), else None with a warning."""
        from safetensors.torch import load_file

        folders = [Path(args.output_dir) / f"checkpoint-{state.global_step}"]
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            folders.insert(0, Path(args.resume_from_checkpoint))
        for folder in folders:
            if (folder / INIT_IN_CHECKPOINT).is_file():
                tensors = load_file(str(folder / INIT_IN_CHECKPOINT))
                expected = set(model.state_dict())
                if set(tensors) != expected:
                    raise ValueError(
                        f"{NAME}: {folder / INIT_IN_CHECKPOINT} holds other tensors than the "
                        f"model ({len(set(tensors) ^ expected)} names differ); was the run "
                        "resumed with another model?"
                    )
                return tie_like(tensors, model)
        warnings.warn(
            f"{NAME}: resuming at step {state.global_step}, but "
            f"{' or '.join(str(f) for f in folders)} holds no {INIT_IN_CHECKPOINT} (saved "
            "without the callback?): theta_0 is taken from the resumed weights, not the "
            "initialisation",
            stacklevel=2,
        )
        return None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """theta_0 into the checkpoint the Trainer just saved, for a later resume."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and self.init is not None and folder.is_dir():
            from mliscan.checkpoints import save_checkpoint

            save_checkpoint(folder / INIT_IN_CHECKPOINT, contiguous(self.init), {"role": "init"})

    def _finish(self, args: Any, state: Any, model: Any, processing_class: Any) -> None:
        """Process zero, once per step: measure, log through Trainer.log, write the pair."""
        if self._measured_step == state.global_step or model is None or self.init is None:
            return
        if not state.is_world_process_zero:
            return
        if self._data is None:
            raise RuntimeError(f"{NAME}: the Trainer handed the callback no training data")
        wrapped = Logits(model)
        init = {f"model.{k}": v for k, v in self.init.items()}
        self.result = measure(init, wrapped, self._data, self.settings)
        self._measured_step = state.global_step
        metrics = metrics_of(self.result, self.settings.gauss)
        if self.trainer is not None:
            self.trainer.log(metrics)  # history and every report_to integration
        else:  # a Trainer-like loop that is not a transformers Trainer
            state.log_history.append({**metrics, "step": state.global_step})
        folder = self.out_dir or Path(args.output_dir)
        pair = write_pretrained(folder, model, self.init, processing_class)
        self.written = [*pair, write_record(folder, self.result)]

    def on_step_end(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if control.should_training_stop:  # the last step: before the integrations close
            self._finish(args, state, model, processing_class)

    def on_epoch_end(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if control.should_training_stop:  # stopped early (e.g. EarlyStoppingCallback)
            self._finish(args, state, model, processing_class)

    def on_train_end(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        self._finish(args, state, model, processing_class)  # when no stop was signalled
        message = failure(self.result, self.settings) if self.result is not None else None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            box = [message]
            torch.distributed.broadcast_object_list(box, src=0)  # every process fails
            message = box[0]
        if message is not None:
            raise MLIGateError(message)
