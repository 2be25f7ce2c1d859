"""Resource policy of an evaluation: batch size, memory estimates, out-of-memory halving.

None of this changes a number except through the batch size (float sums in another order,
at float32 rounding); it decides how the work is cut so that it fits and runs fast.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from mliscan.batchnorm import batch_slices
from mliscan.data import data_memory_budget

T = TypeVar("T")
# Largest output of one evaluation batch (bytes), per device type: bounds the batch size of
# models with large outputs (language-model logits), whose loss also needs a same-sized copy.
OUTPUT_BYTES_BUDGET = {"cpu": 64 << 20, "cuda": 1 << 30, "mps": 256 << 20}


def activation_budget(device: torch.device) -> int:
    """Bytes a full-batch pass may hold: half the free GPU memory, or on the CPU the data
    memory budget (``$MLISCAN_DATA_MEMORY``, else a quarter of physical memory)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2
    return data_memory_budget()


def out_of_memory() -> tuple[type[BaseException], ...]:
    """The errors that mean 'the device ran out of memory' (CUDA's, on any build)."""
    return (torch.cuda.OutOfMemoryError,)


def output_bytes(out: object) -> int:
    """Bytes of the tensors in a module's output (a tensor, or a dict, ``ModelOutput``,
    tuple or list of them)."""
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, dict):
        return sum(output_bytes(v) for v in out.values())
    if isinstance(out, (tuple, list)):
        return sum(output_bytes(v) for v in out)
    return 0


class ResourcePolicy:
    """Chooses the evaluation batch size and halves it on out-of-memory errors.

    ``batch_size`` is the given one, or the fastest of the adapter's candidates that keeps a
    batch's output under ``OUTPUT_BYTES_BUDGET`` (a short timing probe, run once)."""

    def __init__(
        self,
        module: nn.Module,
        inputs: torch.Tensor,
        candidates: Sequence[int],
        given: int | None = None,
        whole: bool = False,
    ) -> None:
        self.module = module
        self.inputs = inputs
        self.candidates = tuple(candidates)
        # a model whose output depends on the batch (BN without running statistics) is
        # evaluated on the whole data as one batch, whatever the batch size given
        self._batch_size = len(inputs) if whole else given
        self.whole = whole

    @property
    def batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = self.probe()
        return self._batch_size

    @torch.inference_mode()
    def probe(self) -> int:
        n = len(self.inputs)
        candidates = sorted(
            {min(c, n) for c in self.candidates} | ({n} if n <= self.candidates[-1] * 2 else set())
        )
        per_example = output_bytes(self.module(self.inputs[:1]))
        budget = OUTPUT_BYTES_BUDGET.get(self.inputs.device.type, OUTPUT_BYTES_BUDGET["cpu"])
        cap = max(1, budget // max(1, per_example))
        candidates = [c for c in candidates if c <= cap] or [min(cap, n)]
        if len(candidates) == 1:
            return candidates[0]
        best, best_rate = candidates[-1], float("inf")
        for bs in candidates:
            x = self.inputs[: min(n, 2 * bs)]
            self.module(x[:bs])  # warm-up
            t = time.perf_counter()
            for s in batch_slices(len(x), bs):
                self.module(x[s])
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            rate = (time.perf_counter() - t) / len(x)
            if rate < best_rate:
                best, best_rate = bs, rate
        return best

    def retry(self, fn: Callable[[], T]) -> T:
        """Run an evaluation; on out-of-memory halve the batch size and run it again."""
        while True:
            try:
                return fn()
            except out_of_memory():
                if self.batch_size <= 1 or self.whole:
                    raise
                self._batch_size = max(1, self.batch_size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"CUDA out of memory: evaluation batch size halved to {self._batch_size}",
                    stacklevel=2,
                )

    @torch.inference_mode()
    def full_batch_fits(self, module: nn.Module) -> bool:
        """Whether one pass over the whole data as a single batch fits the activation budget
        (peak: a few live activations of the largest layer, measured on two examples)."""
        largest = [0]

        def hook(_m: nn.Module, _a: object, out: object) -> None:
            largest[0] = max(largest[0], output_bytes(out))

        leaves = [m for m in module.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(hook) for m in leaves]
        try:
            module(self.inputs[:2])
        finally:
            for h in hooks:
                h.remove()
        n = len(self.inputs)
        peak = 4 * largest[0] * n // min(2, n)
        return peak <= activation_budget(self.inputs.device)
