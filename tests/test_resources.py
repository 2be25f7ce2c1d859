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
