"""The resource policy: batch-size choice, the full-batch memory estimate, OOM halving."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mliscan import resources
from mliscan.resources import ResourcePolicy


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def test_given_batch_size_is_kept_and_probe_picks_a_candidate():
    x = torch.randn(300, 8)
    assert ResourcePolicy(_net(), x, (64, 256), given=7).batch_size == 7
    probed = ResourcePolicy(_net(), x, (64, 256)).batch_size
    assert probed in (64, 256, 300)


def test_output_budget_caps_the_batch(monkeypatch):
    monkeypatch.setitem(resources.OUTPUT_BYTES_BUDGET, "cpu", 3 * 4 * 10)  # 10 examples' logits
    assert ResourcePolicy(_net(), torch.randn(300, 8), (64, 256)).batch_size == 10


def test_retry_halves_on_out_of_memory_until_it_fits():
    policy = ResourcePolicy(_net(), torch.randn(100, 8), (64,), given=100)
    seen = []

    def run() -> int:
        seen.append(policy.batch_size)
        if policy.batch_size > 25:
            raise torch.cuda.OutOfMemoryError("simulated")
        return policy.batch_size

    with pytest.warns(UserWarning, match="halved"):
        assert policy.retry(run) == 25
    assert seen == [100, 50, 25]


def test_retry_gives_up_at_batch_one():
    policy = ResourcePolicy(_net(), torch.randn(4, 8), (64,), given=1)

    def run() -> None:
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        policy.retry(run)


def test_full_batch_estimate_follows_the_budget(monkeypatch):
    policy = ResourcePolicy(_net(), torch.randn(1000, 8), (64,))
    monkeypatch.setattr(resources, "activation_budget", lambda device: 1 << 30)
    assert policy.full_batch_fits(policy.module)
    monkeypatch.setattr(resources, "activation_budget", lambda device: 1000)
    assert not policy.full_batch_fits(policy.module)


def test_the_batch_size_is_chosen_from_memory_not_a_clock(monkeypatch):
    """The same model and data give the same batch size however fast the machine is."""

    def no_clock() -> float:
        raise AssertionError("the batch size must not be timed")

    monkeypatch.setattr("time.perf_counter", no_clock)
    monkeypatch.setattr("time.monotonic", no_clock)
    x = torch.randn(3000, 8)
    sizes = {ResourcePolicy(_net(), x, (64, 256, 1024)).batch_size for _ in range(3)}
    assert sizes == {1024}  # 16 floats a layer: every candidate fits, the largest is taken


def test_wide_layers_get_smaller_batches_and_the_second_order_pass_its_own(monkeypatch):
    monkeypatch.setattr(resources, "CPU_TENSOR_BYTES", 64 * 4 * 256)  # 256 rows 64 wide
    wide = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3))
    policy = ResourcePolicy(wide, torch.randn(3000, 8), (64, 128, 256, 1024))
    assert policy.batch_size == 256

    def second_order(x: torch.Tensor) -> torch.Tensor:  # makes tensors three times as large
        return wide[0](x.repeat(3, 1)).sum(0)

    assert policy.second_order_batch_size(second_order) == 64
    given = ResourcePolicy(wide, torch.randn(3000, 8), (64, 1024), given=1000)
    assert given.second_order_batch_size(second_order) == 1000  # a given size is kept


def test_a_batch_over_half_the_data_is_the_whole_data():
    # 256 of 300 examples would leave a batch of 44 beside it: one batch of 300 instead
    assert ResourcePolicy(_net(), torch.randn(300, 8), (64, 256)).batch_size == 300
    assert ResourcePolicy(_net(), torch.randn(600, 8), (64, 256)).batch_size == 256


class _ScaledWeight(nn.Module):
    """A forward that makes a large tensor of its own weight (not growing with the batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 8))
        self.big = nn.Parameter(torch.randn(2048, 2048))  # 16 MiB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight * 2).t() + (self.big * 2).sum()


def test_tensors_that_do_not_grow_with_the_batch_do_not_shrink_it():
    policy = ResourcePolicy(_ScaledWeight(), torch.randn(3000, 8), (64, 1024))
    assert policy.pass_bytes(policy.module) == (3 * 4, 3 * 4)  # per example: the output
    assert policy.batch_size == 1024
