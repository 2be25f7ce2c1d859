"""Batch-norm policy of an evaluation: how each alpha's BN statistics are obtained.

Which statistics (``BNSpec``: the data's own, pooled per-batch, the paper's warm-up, or
interpolated) and how they are computed here: one full-batch pass that is also the
evaluation, or, when that pass does not fit (the memory estimate says so, or the device runs
out of memory), the same statistics in chunks. The arithmetic itself is in
:mod:`mliscan.batchnorm`.
"""

from __future__ import annotations

import contextlib
import enum
import warnings
from collections.abc import Iterator
from typing import Final

import torch
from torch import nn

from mliscan import batchnorm, contract
from mliscan.errors import UsageError
from mliscan.record import Note
from mliscan.resources import ResourcePolicy, out_of_memory
from mliscan.spec import PAPER_BN_BATCH_SIZE, PAPER_BN_MOMENTUM, BNSpec


class _Unset(enum.Enum):
    """The chunk size before it is first chosen (a sentinel the type checker can tell apart)."""

    UNSET = enum.auto()


_UNSET: Final = _Unset.UNSET


class BNPolicy:
    """Re-estimates the BN layers' statistics at the module's current weights."""

    def __init__(
        self,
        module: nn.Module,
        layers: list[batchnorm.BNLayer],
        inputs: torch.Tensor,
        spec: BNSpec,
        resources: ResourcePolicy,
    ) -> None:
        if layers and spec.mode != "interpolate" and len(inputs) < 2:
            raise UsageError(
                f"batch-norm statistics need at least 2 examples, the data has {len(inputs)}; "
                "raise --data-limit, or keep the stored statistics with --bn-mode interpolate"
            )
        self.module = module
        self.layers = layers
        self.inputs = inputs
        self.spec = spec
        self.resources = resources
        self._chunk: int | _Unset | None = _UNSET
        self.output: object | None = None
        """The full-batch pass's output (the evaluation of every example), until taken."""
        self.reuse_output = True
        """False once the run-time check found the pass's output unlike the module's own
        eval-mode forward: every alpha is then evaluated by its own forward."""
        self._calls: dict[int, int] | None = None

    @property
    def active(self) -> bool:
        return bool(self.layers)

    @property
    def chunk(self) -> int | None:
        """Full-data statistics: None for one full-batch pass (it is also the evaluation),
        else the chunk size of the chunked computation (data too large to hold as a batch)."""
        if self._chunk is _UNSET:
            self._chunk = self._choose_chunk()
        return self._chunk

    @chunk.setter
    def chunk(self, value: int | None) -> None:
        self._chunk = value

    def _choose_chunk(self) -> int | None:
        if not self.layers or self.spec.mode != "exact" or self.spec.batch_size:
            return None
        if not isinstance(self.inputs, torch.Tensor):
            return self.resources.batch_size  # streamed data is never held whole
        fits = self.resources.full_batch_fits(self.module)
        return None if fits else self.resources.batch_size

    def reestimate(self) -> None:
        """Statistics for the current weights; on out-of-memory in the full-batch pass, the
        same statistics in chunks of the evaluation batch size (with a warning)."""
        self.output = None
        if not self.layers:
            return
        try:
            self.output = batchnorm.reestimate(
                self.module, self.layers, self.inputs, self.spec, chunk=self.chunk
            )
        except out_of_memory():
            if self.chunk is not None:
                raise
            self.chunk = self.resources.batch_size
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(
                "CUDA out of memory in the full-batch BN pass: the same statistics are now "
                f"computed in chunks of {self.chunk} (slower)",
                stacklevel=2,
            )
            self.reestimate()

    def take_output(self) -> object | None:
        """The full-batch pass's output, once (None when there was none or it is not used)."""
        out, self.output = self.output, None
        return out if self.reuse_output else None

    def calls(self) -> dict[int, int]:
        """How often one forward pass calls each BN layer (counted once, on two examples)."""
        if self._calls is None:
            self._calls = batchnorm.count_calls(self.module, self.layers, self.inputs[:2])
        return self._calls

    @property
    def in_pass(self) -> bool:
        """Whether each alpha's statistics can be the data's own inside a vmapped pass (full
        data as one batch, every layer keeping statistics)."""
        return (
            bool(self.layers)
            and self.spec.mode == "exact"
            and self.spec.variance == "population"
            and self.spec.batch_size is None
            and self.chunk is None
            and batchnorm.all_bn_keep_stats(self.module)
            and contract.bn_pass_is_evaluation(self.module, self.calls())
        )

    @contextlib.contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """BN layers normalise each forward's batch by its own statistics (no buffers)."""
        saved = [(m, m.running_mean, m.running_var) for m in self.layers]
        try:
            for m, _, _ in saved:
                m.running_mean = None
                m.running_var = None
            yield
        finally:
            for m, mean, var in saved:
                m.running_mean = mean
                m.running_var = var


# Above this leftover weight of the reset statistics (mean 0, variance 1) a paper-mode
# warm-up has not washed them out: the statistics are then partly made up.
PAPER_RESIDUAL_WARNING = 0.01


def paper_residual(examples: int, spec: BNSpec) -> float:
    """The weight the paper mode's exponential average leaves on the reset statistics after
    its warm-up: (1 - momentum) ** batches (0 for the other modes)."""
    if spec.mode != "paper":
        return 0.0
    size = spec.batch_size or PAPER_BN_BATCH_SIZE
    slices = batchnorm.batch_slices(examples, size, spec.max_batches)
    return (1.0 - PAPER_BN_MOMENTUM) ** len(slices)


def paper_note(examples: int, spec: BNSpec) -> Note | None:
    """A warning when the paper mode's warm-up is too short to wash out the reset."""
    residual = paper_residual(examples, spec)
    if residual <= PAPER_RESIDUAL_WARNING:
        return None
    batches = len(
        batchnorm.batch_slices(examples, spec.batch_size or PAPER_BN_BATCH_SIZE, spec.max_batches)
    )
    return Note(
        "batch-norm",
        f"--bn-mode paper: the warm-up has only {batches} batches, which leaves "
        f"{residual:.0%} of the weight on the reset statistics (mean 0, variance 1); the BN "
        "statistics are partly made up. Use --bn-mode exact, or a smaller --bn-batch-size "
        "(more batches)",
    )
