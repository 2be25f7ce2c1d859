"""Batch-norm statistics at one point of the path.

``exact`` (default): reset, then one train-mode pass over the training data in batches of
``batch_size`` (each batch normalised by its own statistics, as in training). A forward
pre-hook on every BN layer accumulates the per-channel mean and the *population* variance of
its input over all examples, combining batches by Chan et al.'s parallel formula in float64
(algebraically the running sums and sums of squares, without their cancellation), so batches
weigh by their size. The result is stored as the layers' running statistics.

This avoids the flaw of torch's ``momentum=None`` cumulative average (used by
``torch.optim.swa_utils.update_bn``), which weighs every batch equally.

``paper``: the paper code's recipe, one epoch of train-mode passes at momentum 0.1 (torch's
exponential average of per-batch means and unbiased variances), after a reset.

Batches are taken in dataset order. A trailing batch of one example is merged into the one
before it, since a one-example batch has no variance (torch refuses it in train mode).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mliscan.spec import PAPER_BN_MOMENTUM, BNSpec


def batch_slices(n: int, batch_size: int | None, max_batches: int | None = None) -> list[slice]:
    """Consecutive slices covering [0, n); no trailing slice of a single example."""
    size = n if batch_size is None else max(1, batch_size)
    starts = list(range(0, n, size))
    slices = [slice(s, min(s + size, n)) for s in starts]
    if len(slices) > 1 and slices[-1].stop - slices[-1].start == 1:
        slices[-2] = slice(slices[-2].start, n)
        slices.pop()
    if max_batches is not None:
        slices = slices[:max_batches]
    return slices


class _Moments:
    """Running count, mean and sum of squared deviations per channel (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        dims = [0, *range(2, x.ndim)]
        count = x.numel() // x.shape[1]
        var_b, mean_b = torch.var_mean(x.detach(), dim=dims, correction=0)
        mean_b, m2_b = mean_b.double(), var_b.double() * count
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = count, mean_b, m2_b
            return
        total = self.n + count
        d = mean_b - self.mean
        self.mean = self.mean + d * (count / total)
        self.m2 = self.m2 + m2_b + d * d * (self.n * count / total)
        self.n = total


def reestimate(
    module: nn.Module,
    layers: list[nn.modules.batchnorm._BatchNorm],
    inputs: torch.Tensor,
    spec: BNSpec,
    forward: Callable[[torch.Tensor], object] | None = None,
) -> None:
    """Set every layer's running statistics for the module's current weights.

    Leaves the module in eval mode. ``forward`` defaults to ``module``.
    """
    layers = [m for m in layers if m.running_mean is not None]
    if spec.mode == "interpolate" or not layers:
        module.eval()
        return
    run = forward or module
    slices = batch_slices(len(inputs), spec.batch_size, spec.max_batches)
    # Integer buffers are copied from theta_0, never advanced by the re-estimation pass.
    counters = [
        (m, m.num_batches_tracked.clone()) for m in layers if m.num_batches_tracked is not None
    ]
    module.train()
    try:
        with torch.no_grad():
            if spec.mode == "paper":
                _paper(layers, inputs, slices, run)
            else:
                _exact(layers, inputs, slices, run)
    finally:
        module.eval()
        for m, count in counters:
            m.num_batches_tracked.copy_(count)


def _exact(layers, inputs, slices, run) -> None:  # type: ignore[no-untyped-def]
    moments = {id(m): _Moments() for m in layers}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: moments[id(mod)].add(args[0])) for m in layers
    ]
    try:
        for s in slices:
            run(inputs[s])
    finally:
        for h in hooks:
            h.remove()
    for m in layers:
        mom = moments[id(m)]
        if mom.mean is None or mom.m2 is None:
            continue  # layer not reached by the forward pass
        assert m.running_mean is not None and m.running_var is not None
        m.running_mean.copy_(mom.mean.to(m.running_mean.dtype))
        m.running_var.copy_((mom.m2 / mom.n).to(m.running_var.dtype))


def _paper(layers, inputs, slices, run) -> None:  # type: ignore[no-untyped-def]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = PAPER_BN_MOMENTUM
    try:
        for s in slices:
            run(inputs[s])
    finally:
        for m, mom in zip(layers, saved, strict=True):
            m.momentum = mom
