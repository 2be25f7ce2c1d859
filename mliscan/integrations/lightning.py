"""``MLICallback`` for PyTorch Lightning 2.x (``pip install mliscan[lightning]``).

    from mliscan.integrations.lightning import MLICallback
    trainer = lightning.pytorch.Trainer(callbacks=[MLICallback(fail_on_nonmonotonic=True)])

At the start of fit the callback keeps theta_0 (on the CPU); at the end of fit (and every N
epochs when asked) it measures the straight path from theta_0 to the current weights on at
most ``max_examples`` training examples, logs ``mli/min_delta``, ``mli/monotonic``,
``mli/distance``, ``mli/normalized_distance``, ``mli/barrier`` (and ``mli/gauss_length``)
through the trainer's loggers, writes ``init.safetensors``, ``final.safetensors`` and
``mli.json`` into the run's log folder, and can fail the run (``MLIGateError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:  # the framework is an optional extra: a clear message when it is absent
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mliscan.integrations.lightning needs Lightning 2.x: pip install 'mliscan[lightning]'"
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

__all__ = ["MLICallback", "MLIGateError"]


def network_keys(state: dict[str, Any]) -> dict[str, Any]:
    """The network's own tensor names: a LightningModule that keeps its network in one
    attribute (``self.model``) has every key under that prefix; the files drop it, so that
    ``mliscan compare/check --model pkg:factory`` (the plain network) reads them."""
    from mliscan.checkpoints import strip_lightning_attribute

    return strip_lightning_attribute(state)[0]


class MLICallback(Callback):
    """Measure MLI from the start of fit to its end (see the module docstring).

    ``inputs``: a function batch -> (X, y) when the training batches are not (X, y) pairs.
    ``loss``: per-example loss (cross-entropy by default). ``every_n_epochs``: also measure
    at the end of every N-th epoch (logged, no files).
    """

    def __init__(
        self,
        *,
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        alphas: int = 25,
        gauss: bool = False,
        tol: float = 0.0,
        fail_on_nonmonotonic: bool = False,
        max_delta: float | None = None,
        every_n_epochs: int | None = None,
        loss: Any = None,
        inputs: Any = None,
        save_init: str = "memory",
        out_dir: str | Path | None = None,
    ) -> None:
        if save_init not in ("memory", "file"):
            raise ValueError("save_init must be 'memory' or 'file'")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError("every_n_epochs must be at least 1")
        self.settings = MLISettings(
            max_examples, alphas, gauss, tol, fail_on_nonmonotonic, max_delta, loss
        )
        self.every_n_epochs = every_n_epochs
        self.inputs = inputs
        self.save_init = save_init
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.init: dict[str, Any] | None = None
        self.result: Any = None
        self.written: list[Path] = []

    def _folder(self, trainer: Any) -> Path:
        if self.out_dir is not None:
            return self.out_dir
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.init = cpu_state(pl_module)
        if self.save_init == "file":  # theta_0 on disk, not in memory
            from mliscan.checkpoints import save_checkpoint

            path = self._folder(trainer) / "init.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(
                path, {k: v.contiguous() for k, v in self.init.items()}, {"role": "init"}
            )
            self.init = None

    def _init(self, trainer: Any) -> dict[str, Any]:
        if self.init is not None:
            return self.init
        from mliscan.checkpoints import load_checkpoint

        return load_checkpoint(self._folder(trainer) / "init.safetensors").tensors

    def _measure(self, trainer: Any, pl_module: Any) -> Any:
        data = sample(trainer.train_dataloader, self.settings.max_examples, self.inputs)
        saved, pl_module.trainer = pl_module.trainer, None  # copy the module, not the trainer
        try:
            result = measure(self._init(trainer), pl_module, data, self.settings)
        finally:
            pl_module.trainer = saved
        metrics = metrics_of(result, self.settings.gauss)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return result

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        n = self.every_n_epochs
        if n is not None and (trainer.current_epoch + 1) % n == 0:
            self._measure(trainer, pl_module)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.result = self._measure(trainer, pl_module)
        saved, pl_module.trainer = pl_module.trainer, None
        try:
            self.written = write_files(
                self._folder(trainer),
                self._init(trainer),
                pl_module,
                self.result,
                keys=network_keys,
            )
        finally:
            pl_module.trainer = saved
        gate(self.result, self.settings)
