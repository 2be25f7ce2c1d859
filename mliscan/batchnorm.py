"""Batch-norm statistics at one point of the path.

``exact`` with ``batch_size=None`` (the default): the training set's own activation statistics.
Each BN layer's running mean and *population* variance are those of its input over all the
data, with every earlier BN layer normalising by the data's statistics too. This is one
train-mode pass with the whole data as a single batch, and it is self-consistent: in eval
mode with these statistics each BN layer's input over the data has exactly the stored mean
and variance, so the train-mode output of that pass *is* the eval-mode output. The pass
therefore doubles as the evaluation (``reestimate`` returns its output): one forward pass per
alpha instead of two. When the whole data does not fit one batch (streamed data, or too
large for memory) the same statistics are computed in chunks, one pass per BN layer in
forward order, each stopping at that layer (exact, slower).

``exact`` with ``batch_size=B``: one train-mode pass in batches of B (each batch normalised by
its own statistics, as in training). Every BN layer's per-channel input mean and population
variance are accumulated over all examples: the per-batch moments are combined in float64 by
the parallel (Chan et al.) formula, algebraically the running sums and sums of squares
without their cancellation, so batches weigh by their size.

This avoids the flaw of torch's ``momentum=None`` cumulative average (used by
``torch.optim.swa_utils.update_bn``), which weighs every batch equally.

``paper``: the paper code's recipe, one epoch of train-mode passes at momentum 0.1 (torch's
exponential average of per-batch means and unbiased variances), after a reset.

Only the batch-norm layers are put in train mode (dropout and the like stay in eval mode).
Batches are taken in dataset order. A trailing batch of one example is merged into the one
before it, since a one-example batch has no variance (torch refuses it in train mode).

For a plain ``nn.Sequential`` whose other layers act on each example separately, the exact
pass runs layer by layer: every such layer sees the whole data at once (efficient products),
and each BN layer normalises each batch by that batch's own statistics. That is the same
computation as the batched pass, reordered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeGuard

import torch
from torch import nn
from torch.nn import functional as F

from mliscan import contract
from mliscan.spec import PAPER_BN_MOMENTUM, BNSpec

BNLayer = nn.modules.batchnorm._BatchNorm


def apply_child(child: nn.Module, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """One layer of a per-example Sequential; a ReLU rectifies in place (saving an allocation
    and a pass) unless its input shares memory with the data, which is never written to."""
    if (
        type(child) is nn.ReLU
        and x.untyped_storage().data_ptr() != data.untyped_storage().data_ptr()
    ):
        return torch.relu_(x)
    return child(x)


def lean_forward(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An evaluation forward for a Sequential of per-example layers (eval-mode BN included)
    that rectifies in place; None for other modules, and wherever it would not provably be
    the module's own call (:func:`mliscan.contract.lean_sequential`)."""
    if not contract.lean_sequential(module):
        return None

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = x
        for child in module:
            h = apply_child(child, h, x)
        return h

    return forward


def batch_slices(n: int, batch_size: int | None, max_batches: int | None = None) -> list[slice]:
    """Consecutive slices covering [0, n); no trailing slice of a single example."""
    size = n if batch_size is None else max(1, batch_size)
    slices = [slice(s, min(s + size, n)) for s in range(0, n, size)]
    if len(slices) > 1 and slices[-1].stop - slices[-1].start == 1:
        slices[-2] = slice(slices[-2].start, n)
        slices.pop()
    if max_batches is not None:
        slices = slices[:max_batches]
    return slices


def combine_moments(
    means: torch.Tensor, variances: torch.Tensor, counts: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled mean and population variance from per-batch means and population variances
    ([B, C]) and counts (float64): var = sum_b n_b (var_b + (mean_b - mean)^2) / N."""
    m = means.double()
    v = variances.double()
    n = torch.tensor(counts, dtype=torch.float64, device=m.device).unsqueeze(1)
    total = n.sum()
    mean = (n * m).sum(0) / total
    var = (n * (v + (m - mean) ** 2)).sum(0) / total
    return mean, var


class _Reached(Exception):
    """Stops a chunked pass once the BN layer it measures has seen its input."""


def reestimate(
    module: nn.Module,
    layers: list[BNLayer],
    inputs: torch.Tensor,
    spec: BNSpec,
    forward: Callable[[torch.Tensor], object] | None = None,
    chunk: int | None = None,
) -> object | None:
    """Set every layer's running statistics for the module's current weights.

    Leaves the module in eval mode. ``forward`` defaults to ``module``. With full-data
    statistics (``spec.batch_size is None``) ``chunk`` asks for the chunked computation
    (batches of ``chunk``) instead of one full batch; streamed inputs are always chunked.

    Returns the module's output over all of ``inputs`` when the pass was one full batch and
    every BN module keeps running statistics: that output equals the eval-mode output with
    the statistics just stored (see the module docstring), so callers may use it as the
    evaluation. Otherwise None.
    """
    layers = [m for m in layers if m.running_mean is not None]
    module.eval()
    if spec.mode == "interpolate" or not layers:
        return None
    _UNBIASED[0] = spec.variance == "unbiased"
    try:
        out = _reestimate(module, layers, inputs, spec, forward, chunk)
    finally:
        _UNBIASED[0] = False
    # with unbiased variances eval mode no longer reproduces the pass: no reuse
    return None if spec.variance == "unbiased" else out


def _reestimate(
    module: nn.Module,
    layers: list[BNLayer],
    inputs: torch.Tensor,
    spec: BNSpec,
    forward: Callable[[torch.Tensor], object] | None,
    chunk: int | None,
) -> object | None:
    run = forward or module
    full = spec.mode == "exact" and spec.batch_size is None
    held = isinstance(inputs, torch.Tensor)  # streamed data is never held whole
    # Integer buffers are copied from theta_0, never advanced by the re-estimation pass.
    counters = [
        (m, tracked.clone()) for m in layers if (tracked := m.num_batches_tracked) is not None
    ]
    if full and (chunk is not None or not held):
        try:
            with torch.no_grad():
                _exact_chunked(layers, inputs, chunk or 256, run)
        finally:
            module.eval()
            _restore_counts(counters)
        return None
    slices = batch_slices(len(inputs), spec.batch_size, spec.max_batches)
    for m in layers:
        m.train()
    out: object = None
    calls: dict[int, int] = {}
    try:
        with torch.no_grad():
            if spec.mode == "paper":
                _paper(layers, inputs, slices, run)
            elif forward is None and held and _layerwise_ok(module, layers):
                out = _exact_layerwise(module, layers, inputs, slices)
                calls = {id(m): 1 for m in layers}
            else:
                out, calls = _exact(layers, inputs, slices, run)
    finally:
        module.eval()
        _restore_counts(counters)
    whole = len(slices) == 1 and slices[0].stop == len(inputs)
    # The pass's output is the evaluation only where that is proven (each BN module of
    # exact type, without hooks, called once): a BN called twice normalises each call by
    # its own batch in the pass but by the pooled statistics in eval mode.
    return out if whole and contract.bn_pass_is_evaluation(module, calls) else None


def _restore_counts(counters: list[tuple[BNLayer, torch.Tensor]]) -> None:
    """Put back each layer's ``num_batches_tracked`` as counted before the pass."""
    for m, count in counters:
        tracked = m.num_batches_tracked
        if tracked is not None:  # pragma: no cover - counted only where it was a tensor
            tracked.copy_(count)


@torch.no_grad()
def count_calls(module: nn.Module, layers: list[BNLayer], x: torch.Tensor) -> dict[int, int]:
    """id(layer) -> how many times one eval-mode forward of ``x`` calls it."""
    calls = {id(m): 0 for m in layers}

    def hook(mod: nn.Module, _args: object, _out: object) -> None:
        calls[id(mod)] += 1

    hooks = [m.register_forward_hook(hook) for m in layers]
    try:
        module.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def batch_dependent(module: nn.Module) -> list[str]:
    """Names of BN modules that normalise by the batch in eval mode
    (``track_running_stats=False``): their model's output depends on the batch."""
    return [
        name
        for name, m in module.named_modules()
        if isinstance(m, BNLayer) and m.running_mean is None
    ]


def all_bn_keep_stats(module: nn.Module) -> bool:
    """No BN module normalises by the batch in eval mode (track_running_stats=False)."""
    return all(m.running_mean is not None for m in module.modules() if isinstance(m, BNLayer))


# --bn-variance: "population" stores each layer's population variance (self-consistent:
# eval mode then normalises the data exactly as the full-batch pass did); "unbiased" stores
# N/(N-1) times it, torch's convention (a momentum=None pass, swa_utils.update_bn, REPAIR).
_UNBIASED = [False]


def _store(m: BNLayer, mean: torch.Tensor, var: torch.Tensor, count: float | None = None) -> None:
    if m.running_mean is None or m.running_var is None:  # pragma: no cover - filtered above
        return
    if _UNBIASED[0] and count is not None and count > 1:
        var = var * (count / (count - 1))
    m.running_mean.copy_(mean.to(m.running_mean.dtype))
    m.running_var.copy_(var.to(m.running_var.dtype))


def _store_pooled(
    m: BNLayer, means: torch.Tensor, variances: torch.Tensor, counts: list[int]
) -> None:
    mean, var = combine_moments(means, variances, counts)
    _store(m, mean, var, float(sum(counts)))


def _exact(layers, inputs, slices, run) -> tuple[object, dict[int, int]]:
    # With momentum 1 torch's own train-mode kernel leaves each batch's mean and unbiased
    # variance in the running buffers, so no second reduction over the activations is
    # needed: a forward hook copies them (per-channel vectors); they are combined at the end.
    seen: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], list[int]]] = {
        id(m): ([], [], []) for m in layers
    }
    saved = [m.momentum for m in layers]

    def hook(mod: BNLayer, args: tuple[torch.Tensor, ...], _out: object) -> None:
        mean, var = mod.running_mean, mod.running_var
        if mean is None or var is None:  # pragma: no cover - reestimate keeps layers with both
            return
        x = args[0]
        count = x.numel() // x.shape[1]
        means, variances, counts = seen[id(mod)]
        means.append(mean.clone())
        variances.append(var * ((count - 1) / count))
        counts.append(count)

    for m in layers:
        m.reset_running_stats()
        m.momentum = 1.0
    hooks = [m.register_forward_hook(hook) for m in layers]
    out = None
    try:
        for s in slices:
            out = run(inputs[s])
    finally:
        for h in hooks:
            h.remove()
        for m, mom in zip(layers, saved, strict=True):
            m.momentum = mom
    for m in layers:
        means, variances, counts = seen[id(m)]
        if counts:  # a layer the forward pass never reached keeps its reset statistics
            _store_pooled(m, torch.stack(means), torch.stack(variances), counts)
    # calls of each layer per forward pass (the output is reused only at exactly 1)
    calls = {i: len(c) // max(1, len(slices)) for i, (_, _, c) in seen.items()}
    return out, calls


def _layerwise_ok(module: nn.Module, layers: list[BNLayer]) -> TypeGuard[nn.Sequential]:
    """The layer-wise pass stands in for the batched one (:mod:`mliscan.contract`), and the
    BN children are exactly the layers to measure."""
    if not contract.layerwise_bn(module):
        return False
    bns = [c for c in module._modules.values() if isinstance(c, BNLayer)]
    return {id(m) for m in bns} == {id(m) for m in layers}


def _exact_layerwise(module: nn.Sequential, layers, inputs, slices) -> torch.Tensor:
    x = inputs[: slices[-1].stop]
    for child in module._modules.values():
        if not isinstance(child, BNLayer):
            x = apply_child(child, x, inputs)
            continue
        # Leading batches of equal size are normalised together ([B, size, ...] view); the
        # ragged last batch, if any, on its own.
        size = slices[0].stop - slices[0].start
        n_equal = sum(1 for s in slices if s.stop - s.start == size)
        groups = [x[: n_equal * size].view(n_equal, size, *x.shape[1:])]
        if n_equal < len(slices):
            rest = x[n_equal * size :]
            groups.append(rest.view(1, *rest.shape))
        outs, means, variances, counts = [], [], [], []
        for g in groups:
            y, mean, var = _normalise_batches(g, child)
            outs.append(y.flatten(0, 1))
            means.append(mean)
            variances.append(var)
            counts.extend([g[0].numel() // g.shape[2]] * g.shape[0])
        cat = torch.cat if len(outs) > 1 else (lambda t: t[0])
        _store_pooled(child, cat(means), cat(variances), counts)
        x = cat(outs)
    return x


def _normalise_batches(
    g: torch.Tensor, bn: BNLayer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train-mode batch norm of each of B batches in g = [B, size, C, ...]; returns the output
    and each batch's per-channel mean and population variance ([B, C]).

    Each batch goes through torch's fused kernel with momentum 1 into fresh buffers, which
    then hold exactly that batch's mean and unbiased variance (rescaled to the population
    variance): one pass per batch instead of six elementwise passes."""
    batches, channels = g.shape[0], g.shape[2]
    # statistics in the layer's own dtype (autocast: low-precision activations, float32 layer)
    dtype = bn.running_mean.dtype if bn.running_mean is not None else g.dtype
    means = g.new_zeros(batches, channels, dtype=dtype)
    variances = g.new_ones(batches, channels, dtype=dtype)
    outs = [
        F.batch_norm(g[b], means[b], variances[b], bn.weight, bn.bias, True, 1.0, bn.eps)
        for b in range(batches)
    ]
    n = g[0].numel() // channels  # values per channel in one batch (>= 2: see batch_slices)
    variances.mul_((n - 1) / n)
    return torch.stack(outs), means, variances


def _exact_chunked(layers, inputs, chunk: int, run) -> None:
    """Full-data statistics without holding the data as one batch: one pass per BN layer.

    Each pass runs the data in chunks with the layers already measured in eval mode (they
    normalise by the data's statistics, as in the full batch); the first unmeasured layer the
    forward reaches accumulates its input's moments (Chan combination across chunks) and
    stops the forward there. Layers the forward never reaches keep their reset statistics."""
    todo = list(layers)
    for m in todo:
        m.reset_running_stats()
    slices = batch_slices(len(inputs), chunk)
    while todo:
        measured = _measure_first(todo, inputs, slices, run)
        if measured is None:
            return  # the remaining layers are never reached by the forward pass
        layer, means, variances, counts = measured
        _store_pooled(layer, torch.stack(means), torch.stack(variances), counts)
        todo.remove(layer)


def _measure_first(
    todo: list[BNLayer],
    inputs: torch.Tensor,
    slices: list[slice],
    run: Callable[[torch.Tensor], object],
) -> tuple[BNLayer, list[torch.Tensor], list[torch.Tensor], list[int]] | None:
    """Per-chunk input moments of the first layer of ``todo`` that the forward reaches."""
    target: list[BNLayer] = []
    means: list[torch.Tensor] = []
    variances: list[torch.Tensor] = []
    counts: list[int] = []

    def pre(mod: BNLayer, args: tuple[torch.Tensor, ...]) -> None:
        if target and mod is not target[0]:
            raise _Reached  # a later unmeasured layer: its input is not final yet
        target[:1] = [mod]
        x = args[0]
        var, mean = torch.var_mean(x.double(), dim=[0, *range(2, x.ndim)], correction=0)
        means.append(mean)
        variances.append(var)
        counts.append(x.numel() // x.shape[1])
        raise _Reached

    hooks = [m.register_forward_pre_hook(pre) for m in todo]
    try:
        for s in slices:
            with contextlib.suppress(_Reached):
                run(inputs[s])
    finally:
        for h in hooks:
            h.remove()
    return (target[0], means, variances, counts) if target else None


def _paper(layers, inputs, slices, run) -> None:
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
