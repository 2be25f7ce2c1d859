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
from torch.overrides import TorchFunctionMode

from mliscan.data import data_memory_budget

T = TypeVar("T")
# Largest output of one evaluation batch (bytes), per device type: bounds the batch size of
# models with large outputs (language-model logits), whose loss also needs a same-sized copy.
OUTPUT_BYTES_BUDGET = {"cpu": 64 << 20, "cuda": 1 << 30, "mps": 256 << 20}
# On a CPU, the bytes of the largest tensor a batch's pass makes that the automatic batch
# size aims at: large enough that each op's fixed cost is shared by many examples, small
# enough that a batch's tensors stay in memory the allocator reuses (larger ones are fresh
# pages from the OS at every call: minor page faults, measured at up to a third of a
# second-order pass and a different share in every run).
CPU_TENSOR_BYTES = 2 << 20
# On a GPU, how many tensors as large as a pass's largest are live at once (a bound for the
# activation budget): a forward pass, and a second-order pass (z, z', z'' and temporaries).
LIVE_TENSORS = {"forward": 4, "second-order": 8}


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
    (:meth:`fit`: a batch's output under ``OUTPUT_BYTES_BUDGET``; on a CPU the largest
    tensor of its pass near ``CPU_TENSOR_BYTES``, elsewhere its tensors within the device's
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
        self._output_bytes: int | None = None
        self._second_order: int | None = None

    @property
    def batch_size(self) -> int:
        if self._batch_size is None:
            out, largest = self.pass_bytes(self.module)
            self._output_bytes = out
            self._batch_size = self.fit(largest, "forward")
        return self._batch_size

    def second_order_batch_size(self, run: Callable[[torch.Tensor], object]) -> int:
        """The batch size of a second-order pass ``run(x)`` (z, z', z'' of every layer at
        once, and the temporaries of its rules), chosen from the largest tensor it makes on
        one example; never above the evaluation batch size (nor a given one's)."""
        if self.whole or self.given:
            return self.batch_size
        if self._second_order is None:
            self._second_order = self.fit(self.pass_bytes(run)[1], "second-order")
        return min(self.batch_size, self._second_order)

    @property
    def second_order_chosen(self) -> int | None:
        """The second-order pass's batch size once chosen (None before its first pass)."""
        if self.whole or self.given:
            return self.batch_size
        return None if self._second_order is None else min(self.batch_size, self._second_order)

    @torch.inference_mode()
    def pass_bytes(self, run: Callable[[torch.Tensor], object]) -> tuple[int, int]:
        """Per example: (bytes of the output, bytes of the largest tensor any torch call
        makes) when ``run`` evaluates a batch. Measured on one and on two examples, call by
        call: a tensor that does not grow with the batch (a weight, a view of one, a
        position table) counts for nothing."""
        sizes = []
        for rows in (1, 2) if len(self.inputs) > 1 else (1,):
            x = self.inputs[:rows]
            with _TensorSizes() as seen:
                out = output_bytes(run(x))
            sizes.append((out, seen.sizes))
        if len(sizes) == 1:
            ((out, calls),) = sizes
            return out, max([out, *calls])
        (out1, calls1), (out2, calls2) = sizes
        if len(calls1) != len(calls2):  # not the same calls: the larger pass, halved
            return out2 // 2, max([out2, *calls2]) // 2
        growth = [b - a for a, b in zip(calls1, calls2, strict=True)]
        return out2 - out1, max([out2 - out1, *growth])

    def fit(self, per_example: int, kind: str) -> int:
        """The largest candidate whose batch's largest tensor (``per_example`` bytes each)
        fits: near ``CPU_TENSOR_BYTES`` on a CPU, within the activation budget elsewhere;
        its output within ``OUTPUT_BYTES_BUDGET`` in any case."""
        n = len(self.inputs)
        candidates = sorted(
            {min(c, n) for c in self.candidates} | ({n} if n <= self.candidates[-1] * 2 else set())
        )
        if self._output_bytes is None:
            self._output_bytes = self.pass_bytes(self.module)[0]
        device = self.inputs.device
        budget = OUTPUT_BYTES_BUDGET.get(device.type, OUTPUT_BYTES_BUDGET["cpu"])
        cap = max(1, budget // max(1, self._output_bytes))
        candidates = [c for c in candidates if c <= cap] or [min(cap, n)]
        if device.type == "cpu":
            target, live = CPU_TENSOR_BYTES, 1
        else:
            target, live = activation_budget(device), LIVE_TENSORS[kind]
        fits = [c for c in candidates if c * live * per_example <= target]
        size = fits[-1] if fits else candidates[0]
        # a batch over half the data would leave a second, smaller batch: one pass is
        # cheaper than two (each op's fixed cost twice)
        return n if 2 * size > n else size

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


class _TensorSizes(TorchFunctionMode):
    """The bytes of the tensors each torch call returns while the mode is entered, in call
    order (scoped: nothing outside the ``with`` block sees it)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.sizes.append(output_bytes(out))
        return out
