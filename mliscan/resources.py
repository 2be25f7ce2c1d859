"""Resource policy of an evaluation: batch size, memory estimates, out-of-memory halving.

None of this changes a number except through the batch size (float sums in another order,
at float32 rounding); it decides how the work is cut so that it fits and runs fast.

The batch size is chosen from memory, never from a clock: the same model, data and device
give the same batch size, so the same numbers, on a busy machine as on a quiet one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from mliscan.data import data_memory_budget

T = TypeVar("T")
# Largest output of one evaluation batch (bytes), per device type: bounds the batch size of
# models with large outputs (language-model logits), whose loss also needs a same-sized copy.
OUTPUT_BYTES_BUDGET = {"cpu": 64 << 20, "cuda": 1 << 30, "mps": 256 << 20}
# On a CPU, the bytes of a batch's largest layer output that the automatic batch size aims
# at: large enough that each op's fixed cost is shared by many examples, small enough that
# a batch's tensors stay in memory the allocator reuses (larger ones are fresh pages from
# the OS at every call: minor page faults, measured at up to a third of a second-order pass
# and a different share in every run).
CPU_LAYER_BYTES = 2 << 20
# The second-order pass holds z, z' and z'' of every layer and the temporaries of its rules:
# its batch aims at the same bytes with this many times the forward pass's layer output.
SECOND_ORDER_FACTOR = 2


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

    ``batch_size`` is the given one, or the largest of the adapter's candidates that fits
    (:meth:`choose`: a batch's output under ``OUTPUT_BYTES_BUDGET``; on a CPU its largest
    layer output near ``CPU_LAYER_BYTES``, elsewhere its activations within the device's
    memory), measured once on one example: deterministic, no timing."""

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
        self.given = given is not None
        self.whole = whole
        self._sizes: tuple[int, int] | None = None

    @property
    def batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = self.choose()[0]
        return self._batch_size

    @property
    def second_order_batch_size(self) -> int:
        """The batch size of the second-order pass (z, z', z'' at once): the evaluation
        batch size, or a smaller candidate whose larger working set fits as well."""
        if self.whole or self.given:
            return self.batch_size
        return min(self.batch_size, self.choose()[1])

    def choose(self) -> tuple[int, int]:
        """(evaluation, second-order) batch sizes from memory: the largest candidates whose
        output fits ``OUTPUT_BYTES_BUDGET`` and whose layers fit the device's target."""
        if self._sizes is None:
            self._sizes = self._choose()
        return self._sizes

    @torch.inference_mode()
    def _choose(self) -> tuple[int, int]:
        n = len(self.inputs)
        candidates = sorted(
            {min(c, n) for c in self.candidates} | ({n} if n <= self.candidates[-1] * 2 else set())
        )
        out_bytes, layer_bytes = self._per_example()
        device = self.inputs.device.type
        budget = OUTPUT_BYTES_BUDGET.get(device, OUTPUT_BYTES_BUDGET["cpu"])
        cap = max(1, budget // max(1, out_bytes))
        candidates = [c for c in candidates if c <= cap] or [min(cap, n)]

        def largest(per_example: int, target: int) -> int:
            fits = [c for c in candidates if c * per_example <= target]
            size = fits[-1] if fits else candidates[0]
            # a batch over half the data would leave a second, smaller batch: one pass is
            # cheaper than two (each op's fixed cost twice)
            return n if 2 * size > n else size

        if device == "cpu":
            target = CPU_LAYER_BYTES
            return largest(layer_bytes, target), largest(SECOND_ORDER_FACTOR * layer_bytes, target)
        # GPUs: the largest batch whose activations (a few live copies of the largest layer)
        # fit the activation budget
        target = activation_budget(self.inputs.device)
        return (
            largest(4 * layer_bytes, target),
            largest(4 * SECOND_ORDER_FACTOR * layer_bytes, target),
        )

    def _per_example(self) -> tuple[int, int]:
        """Bytes of one example's output and of its largest layer output (one forward pass
        of one example, the leaves' outputs seen by temporary hooks)."""
        largest = [0]

        def hook(_m: nn.Module, _a: object, out: object) -> None:
            largest[0] = max(largest[0], output_bytes(out))

        leaves = [m for m in self.module.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(hook) for m in leaves]
        try:
            out = output_bytes(self.module(self.inputs[:1]))
        finally:
            for h in hooks:
                h.remove()
        return out, max(largest[0], out)

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
