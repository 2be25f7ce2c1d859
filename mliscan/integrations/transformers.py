"""``MLITrainerCallback`` for the Hugging Face Trainer (``pip install mliscan[transformers]``).

    from mliscan.integrations.transformers import MLITrainerCallback
    cb = MLITrainerCallback.attach(trainer, fail_on_nonmonotonic=True)
    trainer.train()

At the start of training the callback keeps theta_0 (on the CPU); at the end it measures the
straight path to the trained weights on at most ``max_examples`` training examples, logs
``mli/min_delta``, ``mli/monotonic``, ``mli/distance``, ``mli/normalized_distance``,
``mli/barrier`` (and ``mli/gauss_length``) through the Trainer's own logging (its
``log_history`` and every ``report_to`` integration), writes ``init.safetensors``,
``final.safetensors`` and ``mli.json`` into ``args.output_dir``, and can fail the run.

Batches are the Trainer's dicts: ``input_ids`` (with ``attention_mask`` when present) are
the inputs, ``labels`` the targets: class labels for a sequence classifier (cross-entropy
per example), token ids for a language model (mean token cross-entropy per sequence, -100
ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

try:  # the framework is an optional extra: a clear message when it is absent
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mliscan.integrations.transformers needs transformers: pip install 'mliscan[transformers]'"
    ) from exc

from mliscan.integrations.common import (
    DEFAULT_MAX_EXAMPLES,
    MLIGateError,
    MLISettings,
    cpu_state,
    gate,
    measure,
    metrics_of,
    sample,
    write_files,
)

__all__ = ["MLIGateError", "MLITrainerCallback"]


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


def _batch_inputs(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
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

    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> MLITrainerCallback:
        """Create the callback, add it to ``trainer`` and log through ``trainer.log``."""
        callback = cls(**kwargs)
        callback.trainer = trainer
        trainer.add_callback(callback)
        return callback

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        self.init = cpu_state(Logits(model))

    def on_train_end(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.init is None or model is None or train_dataloader is None:
            return
        data = sample(train_dataloader, self.settings.max_examples, _batch_inputs)
        wrapped = Logits(model)
        self.result = measure(self.init, wrapped, data, self.settings)
        metrics = metrics_of(self.result, self.settings.gauss)
        if self.trainer is not None:
            self.trainer.log(metrics)  # history and every report_to integration
        else:
            state.log_history.append({**metrics, "step": state.global_step})
        folder = self.out_dir or Path(args.output_dir)
        self.written = write_files(folder, self.init, wrapped, self.result)
        gate(self.result, self.settings)
