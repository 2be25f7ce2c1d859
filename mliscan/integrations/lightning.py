"""``MLICallback`` for PyTorch Lightning 2.x (mliscan's ``lightning`` extra).

    from mliscan.integrations.lightning import MLICallback
    trainer = lightning.pytorch.Trainer(callbacks=[MLICallback(fail_on_nonmonotonic=True)])

At the start of fit the callback keeps theta_0 (on the CPU) and reads its sample of at most
``max_examples`` training examples (so a batch it cannot read is an error before training,
and the sampling leaves the run's shuffling untouched); at the end of training (and every N
epochs when asked, once per epoch) it measures the straight path from theta_0 to the current
weights, logs ``mli/min_delta``, ``mli/monotonic``, ``mli/distance``,
``mli/normalized_distance``, ``mli/barrier`` (and ``mli/gauss_length``) through the
trainer's loggers, writes ``init.safetensors``, ``final.safetensors`` and ``mli.json`` into
the run's log folder, and can fail the run (``MLIGateError``, on every process).

theta_0 is part of the callback's state (``state_dict``, like ``ModelCheckpoint``'s), so a
checkpoint resumed with ``trainer.fit(..., ckpt_path=...)`` still measures from the
original initialisation. The measurement runs on global rank zero only; strategies that
shard the parameters (FSDP, ModelParallel, DeepSpeed stage 3) are refused at setup.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

try:  # the framework is an optional extra: a clear message when it is absent
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mliscan.integrations.lightning needs Lightning 2.x: pip install 'lightning>=2.6.6' "
        "(or install mliscan with its [lightning] extra)"
    ) from exc

from mliscan.integrations.common import (
    DEFAULT_MAX_EXAMPLES,
    MLIGateError,
    MLISettings,
    ShardedStrategyError,
    cpu_state,
    failure,
    measure,
    metrics_of,
    sample,
    sharded_refusal,
    write_files,
)

__all__ = ["MLICallback", "MLIGateError", "ShardedStrategyError"]

NAME = "MLICallback"


def network_keys(state: dict[str, Any]) -> dict[str, Any]:
    """The network's own tensor names: a LightningModule that keeps its network in one
    attribute (``self.model``) has every key under that prefix; the files drop it, so that
    ``mliscan compare/check --model pkg:factory`` (the plain network) reads them."""
    from mliscan.checkpoints import strip_lightning_attribute

    return strip_lightning_attribute(state)[0]


def sharded_strategy(strategy: Any) -> str | None:
    """The name of ``strategy`` when it shards the parameters across processes, else None."""
    from lightning.pytorch.strategies import (
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
    )

    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        return type(strategy).__name__
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        return "DeepSpeedStrategy (ZeRO stage 3)"
    return None


class MLICallback(Callback):
    """Measure MLI from the start of fit to its end (see the module docstring).

    ``inputs``: a function batch -> (X, y) when the training batches are not (X, y) pairs
    (a dict batch needs one). ``loss``: per-example loss (cross-entropy by default).
    ``every_n_epochs``: also measure at the end of every N-th epoch (logged, no files).
    ``save_init="file"``: keep theta_0 in ``init.safetensors`` instead of memory (the
    callback's state then records the file).
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
        self.init_file: Path | None = None
        self.result: Any = None
        self.written: list[Path] = []
        self._restored = False
        self._data: Any = None
        self._measured_step: int | None = None

    # ---- the callback's state: theta_0 survives a resume --------------------------------
    def state_dict(self) -> dict[str, Any]:
        """theta_0 (or the file holding it): saved in every Lightning checkpoint."""
        return {
            "init": self.init,
            "init_file": None if self.init_file is None else str(self.init_file),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.init = state_dict.get("init")
        init_file = state_dict.get("init_file")
        self.init_file = None if init_file is None else Path(init_file)
        self._restored = self.init is not None or self.init_file is not None

    # ---- hooks ------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and (name := sharded_strategy(trainer.strategy)) is not None:
            raise sharded_refusal(NAME, name)

    def _folder(self, trainer: Any) -> Path:
        """The run's log folder (``trainer.log_dir`` is a collective: every rank asks)."""
        if self.out_dir is not None:
            return self.out_dir
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        folder = self._folder(trainer)  # on every rank (a collective), before any return
        restored, self._restored = self._restored, False
        self._measured_step = None
        if not trainer.is_global_zero:
            self.init = None  # only rank zero measures
            return
        if restored:
            return  # theta_0 from the checkpoint being resumed
        if trainer.ckpt_path is not None:
            warnings.warn(
                f"{NAME}: resuming from {trainer.ckpt_path}, which holds no {NAME} state "
                "(saved without the callback?): theta_0 is taken from the resumed weights, "
                "not the initialisation",
                stacklevel=2,
            )
        self.init = cpu_state(pl_module)
        self.init_file = None
        if self.save_init == "file":  # theta_0 on disk, not in memory
            from mliscan.checkpoints import save_checkpoint

            path = folder / "init.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(
                path, {k: v.contiguous() for k, v in self.init.items()}, {"role": "init"}
            )
            self.init, self.init_file = None, path.resolve()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Read the measurement's examples now: a batch the callback cannot read, or a module
        without forward(), fails before training, not after it."""
        from lightning.pytorch import LightningModule

        if type(pl_module).forward is LightningModule.forward:
            raise TypeError(
                f"{NAME}: {type(pl_module).__name__} defines no forward(); the callback "
                "measures the module's own call on the training inputs, so define forward"
            )
        if trainer.is_global_zero:
            loader = trainer.train_dataloader
            if isinstance(loader, (dict, list, tuple)):
                raise TypeError(
                    f"{NAME}: fit was given several training dataloaders "
                    f"({type(loader).__name__}); the callback measures on one"
                )
            self._data = sample(loader, self.settings.max_examples, self.inputs, NAME)

    def _init(self, pl_module: Any) -> dict[str, Any]:
        """theta_0 under the module's own names (the file may already hold the network's
        names: the final pair is written over it)."""
        if self.init is not None:
            return self.init
        from mliscan.checkpoints import load_checkpoint, strip_lightning_attribute

        if self.init_file is None:
            raise RuntimeError(f"{NAME}: theta_0 was never recorded (was fit started?)")
        tensors = load_checkpoint(self.init_file).tensors
        names, prefix = strip_lightning_attribute(dict(pl_module.state_dict()))
        if prefix is not None and set(tensors) == set(names):
            return {prefix + k: v for k, v in tensors.items()}
        return tensors

    def _measure(self, trainer: Any, pl_module: Any) -> Any:
        """Rank zero: the path to the current weights, logged through the trainer's loggers
        (once per global step: the last epoch's measurement is also the final one)."""
        if self._measured_step == trainer.global_step and self.result is not None:
            return self.result
        if self._data is None:  # no training epoch ran (on_train_start never came)
            loader = trainer.train_dataloader
            self._data = sample(loader, self.settings.max_examples, self.inputs, NAME)
        saved, pl_module.trainer = pl_module.trainer, None  # copy the module, not the trainer
        try:
            result = measure(self._init(pl_module), pl_module, self._data, self.settings)
        finally:
            pl_module.trainer = saved
        metrics = metrics_of(result, self.settings.gauss)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.result, self._measured_step = result, trainer.global_step
        return result

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        n = self.every_n_epochs
        if n is not None and (trainer.current_epoch + 1) % n == 0 and trainer.is_global_zero:
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """The final measurement and files on rank zero, its verdict on every rank (before
        the loggers are finalised and the processes part)."""
        folder = self._folder(trainer)
        message = None
        if trainer.is_global_zero:
            result = self._measure(trainer, pl_module)
            saved, pl_module.trainer = pl_module.trainer, None
            try:
                self.written = write_files(
                    folder, self._init(pl_module), pl_module, result, keys=network_keys
                )
            finally:
                pl_module.trainer = saved
            message = failure(result, self.settings)
        message = trainer.strategy.broadcast(message, src=0)
        if message is not None:
            raise MLIGateError(message)
