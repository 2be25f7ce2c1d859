"""adapter.py helpers that run inside other people's processes."""

from __future__ import annotations

import torch

from mliscan.adapter import DataInfo, fresh_init
from mliscan.registry import get_adapter


def test_a_fresh_initialisation_leaves_the_callers_random_state() -> None:
    adapter = get_adapter("mlp")
    options = adapter.parse_options({"hidden": "8"})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = fresh_init(adapter, options, DataInfo((1, 8, 8), 10), seed=5)
    assert torch.equal(torch.rand(3), expected)  # the caller's stream goes on untouched
    b = fresh_init(adapter, options, DataInfo((1, 8, 8), 10), seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)  # and the seed still decides the weights
