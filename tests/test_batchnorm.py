"""Batch-norm re-estimation: exact population statistics, weighted by batch size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mliscan import batchnorm
from mliscan.spec import BNSpec


def _one_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))


def _multi_bn_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 6),
        nn.BatchNorm1d(6),
        nn.Linear(6, 2),
    )


def _full_batch_reference(
    net: nn.Module, x: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean and population variance of every BN layer's input in one full-batch train pass."""
    stats = []
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args: stats.append(
                (
                    args[0].double().mean(dim=[0, *range(2, args[0].ndim)]),
                    args[0].double().var(dim=[0, *range(2, args[0].ndim)], unbiased=False),
                )
            )
        )
        for m in layers
    ]
    net.train()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return stats


def _stats(net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (m.running_mean.double(), m.running_var.double())
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize("batch_size", [2, 7, 64, 100, 256, 299, 300, 1000])
def test_one_bn_layer_equals_full_batch_for_any_batch_size(batch_size: int, generic: bool) -> None:
    net = _one_bn_net()
    # 301 examples: ragged last batches, and a trailing singleton for 100 and 300
    x = torch.randn(301, 5) * 3 + 1
    ref = _full_batch_reference(net, x)
    layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    forward = (lambda b: net(b)) if generic else None
    batchnorm.reestimate(net, layers, x, BNSpec(batch_size=batch_size), forward=forward)
    assert not net.training
    for (mean, var), (rm, rv) in zip(ref, _stats(net), strict=True):
        torch.testing.assert_close(rm, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv, var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("generic", [False, True])
def test_bn_batch_size_all_equals_full_batch_for_any_network(generic: bool) -> None:
    net = _multi_bn_net()
    x = torch.randn(50, 2, 4, 4)
    ref = _full_batch_reference(net, x)
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    forward = (lambda b: net(b)) if generic else None
    batchnorm.reestimate(net, layers, x, BNSpec(batch_size=None), forward=forward)
    for (mean, var), (rm, rv) in zip(ref, _stats(net), strict=True):
        torch.testing.assert_close(rm, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv, var, rtol=1e-5, atol=1e-6)


def test_batches_weigh_by_size_unlike_torch_cumulative_average() -> None:
    """A small last batch must not count as much as a large one (swa_utils.update_bn does)."""
    net = _one_bn_net()
    x = torch.cat([torch.zeros(256, 5), torch.full((6, 5), 10.0)])
    layers = [net[1]]
    batchnorm.reestimate(net, layers, x, BNSpec(batch_size=256))
    ref = _full_batch_reference(net, x)
    torch.testing.assert_close(net[1].running_mean.double(), ref[0][0], rtol=1e-5, atol=1e-6)


def test_max_batches_caps_the_pass() -> None:
    net = _one_bn_net()
    x = torch.randn(300, 5)
    batchnorm.reestimate(net, [net[1]], x, BNSpec(batch_size=100, max_batches=1))
    ref = _full_batch_reference(net, x[:100])
    torch.testing.assert_close(net[1].running_mean.double(), ref[0][0], rtol=1e-5, atol=1e-6)


def test_paper_mode_is_one_epoch_at_momentum_point_one() -> None:
    net = _one_bn_net()
    x = torch.randn(300, 5)
    batchnorm.reestimate(net, [net[1]], x, BNSpec(mode="paper", batch_size=128))
    ref = _one_bn_net()
    ref[1].reset_running_stats()
    ref[1].momentum = 0.1
    ref.train()
    with torch.no_grad():
        for s in (slice(0, 128), slice(128, 256), slice(256, 300)):
            ref(x[s])
    torch.testing.assert_close(net[1].running_mean, ref[1].running_mean)
    torch.testing.assert_close(net[1].running_var, ref[1].running_var)
    assert net[1].momentum == 0.1


def test_batch_slices() -> None:
    assert batchnorm.batch_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert batchnorm.batch_slices(9, 4) == [slice(0, 4), slice(4, 9)]  # no singleton batch
    assert batchnorm.batch_slices(9, None) == [slice(0, 9)]
    assert batchnorm.batch_slices(9, 4, max_batches=1) == [slice(0, 4)]


@pytest.mark.parametrize("batch_size", [7, 64, None])
def test_layerwise_sequential_pass_equals_batched_pass(batch_size: int | None) -> None:
    """The layer-by-layer pass of a Sequential is the batched train-mode pass, reordered."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Linear(5, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.BatchNorm1d(8),
        nn.Tanh(),
        nn.Linear(8, 3),
    )
    x = torch.randn(203, 5)
    layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert batchnorm._layerwise_ok(net, layers)
    batchnorm.reestimate(net, layers, x, BNSpec(batch_size=batch_size))
    fast = _stats(net)
    # the generic path (a wrapper hides the Sequential)
    batchnorm.reestimate(net, layers, x, BNSpec(batch_size=batch_size), forward=lambda b: net(b))
    for (a, b), (c, d) in zip(fast, _stats(net), strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, d, rtol=1e-5, atol=1e-6)
    ref = _full_batch_reference(net, x)
    torch.testing.assert_close(fast[0][0], ref[0][0], rtol=1e-5, atol=1e-6)


def test_only_batch_norm_layers_train_during_the_pass() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2), nn.BatchNorm1d(2)
    )
    x = torch.randn(40, 4)
    batchnorm.reestimate(net, [net[1], net[4]], x, BNSpec(batch_size=None))
    a = net[4].running_mean.clone()
    batchnorm.reestimate(net, [net[1], net[4]], x, BNSpec(batch_size=None))
    torch.testing.assert_close(net[4].running_mean, a)  # dropout off: deterministic


class _Residual(nn.Module):
    """Two branches with BN on each (like a ResNet downsampling block)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.main = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.short = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3), nn.BatchNorm1d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(self.main(h) + self.short(h))


NETS = {"sequential": _multi_bn_net, "residual": _Residual}


@pytest.mark.parametrize("net_name", list(NETS))
def test_full_data_pass_output_is_the_eval_mode_output(net_name: str) -> None:
    """With the whole data as one batch, the train-mode output equals the eval-mode output
    under the statistics just stored, so the pass doubles as the evaluation."""
    net = NETS[net_name]()
    x = torch.randn(53, 2, 4, 4) * 2 + 0.5
    ref = _full_batch_reference(net, x)  # (a momentum-0.1 train pass: before ours)
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for forward in (None, lambda b: net(b)):
        out = batchnorm.reestimate(net, layers, x, BNSpec(batch_size=None), forward=forward)
        assert isinstance(out, torch.Tensor) and not net.training
        with torch.no_grad():
            torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
    for (mean, var), (rm, rv) in zip(ref, _stats(net), strict=True):
        torch.testing.assert_close(rm, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv, var, rtol=1e-5, atol=1e-6)
    # in batches the statistics are pooled, not the evaluation: nothing is returned
    assert batchnorm.reestimate(net, layers, x, BNSpec(batch_size=16)) is None


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("chunk", [2, 7, 52, 53, 1000])
def test_chunked_full_data_statistics_equal_the_full_batch(net_name: str, chunk: int) -> None:
    net = NETS[net_name]()
    x = torch.randn(53, 2, 4, 4) * 2 + 0.5
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    ref = _full_batch_reference(net, x)
    for m in layers:
        m.num_batches_tracked.fill_(7)
    out = batchnorm.reestimate(net, layers, x, BNSpec(batch_size=None), chunk=chunk)
    assert out is None and not net.training
    for (mean, var), (rm, rv) in zip(ref, _stats(net), strict=True):
        torch.testing.assert_close(rm, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv, var, rtol=1e-5, atol=1e-6)
    assert all(int(m.num_batches_tracked) == 7 for m in layers)


def test_merged_evaluation_with_a_bn_layer_that_normalises_by_the_batch() -> None:
    """A BN without running statistics normalises by its batch in both modes: the pass over
    the whole data as one batch is the eval-mode forward over the whole data (the batch
    the evaluator then uses for such a model)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 6),
        nn.BatchNorm1d(6),
        nn.Linear(6, 3),
        nn.BatchNorm1d(3, track_running_stats=False),
    )
    x = torch.randn(30, 4)
    out = batchnorm.reestimate(net, [net[1], net[3]], x, BNSpec(batch_size=None))
    with torch.no_grad():
        torch.testing.assert_close(out, net.eval()(x), rtol=1e-5, atol=1e-6)


def test_no_merged_evaluation_when_a_bn_module_is_called_twice() -> None:
    """Called twice, a BN normalises each call by that call's batch in the pass, but by the
    statistics pooled over both calls in eval mode: the pass is not the evaluation."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.lin(self.bn(x)))

    torch.manual_seed(0)
    net = Twice()
    x = torch.randn(30, 4) * 3 + 1
    assert batchnorm.reestimate(net, [net.bn], x, BNSpec(batch_size=None)) is None
    # the statistics pool every call's input (mean of both inputs' means)
    with torch.no_grad():
        first = x
        second = net.lin(nn.functional.batch_norm(x, None, None, net.bn.weight, net.bn.bias, True))
    both = torch.cat([first, second])
    torch.testing.assert_close(net.bn.running_mean, both.mean(0), rtol=1e-5, atol=1e-6)


def test_lean_forward_rectifies_in_place_but_never_the_data() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.ReLU(), nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)
    ).eval()
    x = torch.randn(10, 2, 4)
    before = x.clone()
    fwd = batchnorm.lean_forward(net)
    assert fwd is not None
    with torch.no_grad():
        torch.testing.assert_close(fwd(x), net(x))
    torch.testing.assert_close(x, before)  # Flatten is a view of the data: ReLU copies there
    assert batchnorm.lean_forward(_Residual()) is None


def test_unbiased_variance_reproduces_torchs_momentum_none_pass() -> None:
    """--bn-variance unbiased stores what torch's cumulative (momentum=None) pass over the
    whole data as one batch stores; population differs from it by exactly (N-1)/N."""
    import copy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(40, 6)
    ref = copy.deepcopy(net)
    ref[1].reset_running_stats()
    ref[1].momentum = None
    ref.train()
    with torch.no_grad():
        ref(x)
    unbiased = copy.deepcopy(net)
    batchnorm.reestimate(unbiased, [unbiased[1]], x, BNSpec(variance="unbiased"))
    torch.testing.assert_close(unbiased[1].running_var, ref[1].running_var)
    torch.testing.assert_close(unbiased[1].running_mean, ref[1].running_mean)
    population = copy.deepcopy(net)
    assert batchnorm.reestimate(population, [population[1]], x, BNSpec()) is not None
    torch.testing.assert_close(population[1].running_var * 40 / 39, ref[1].running_var)
    # pooled batches: the same N/(N-1) over the pooled population variance
    pooled = copy.deepcopy(net)
    batchnorm.reestimate(pooled, [pooled[1]], x, BNSpec(batch_size=16, variance="unbiased"))
    torch.testing.assert_close(pooled[1].running_var, ref[1].running_var)


def test_unbiased_variance_is_for_the_exact_mode() -> None:
    import pytest

    from mliscan.spec import SpecError

    with pytest.raises(SpecError, match="--bn-variance: applies to --bn-mode exact"):
        BNSpec(mode="paper", variance="unbiased")
