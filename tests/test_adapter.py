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


def test_report_label_names_the_scheme_of_tables_1_and_2() -> None:
    """BN or NBN by default; the CIFAR ResNets add their initialisation (Table 2)."""
    mlp, resnet = get_adapter("mlp"), get_adapter("resnet20")
    assert mlp.report_label({"hidden": [8], "bn": True}) == "BN"
    assert mlp.report_label({}) == "NBN"
    assert resnet.report_label({"bn": True, "init": "default"}) == "BN"
    assert resnet.report_label({"bn": True, "init": "block-identity"}) == "BN-I"
    assert resnet.report_label({"bn": False, "init": "fixup"}) == "NBN-F"
    assert resnet.report_label({"bn": False}) == "NBN"


def test_the_example_declares_its_data() -> None:
    """An adapter's small example is of the data it declares, not a guess from its name."""
    assert get_adapter("mlp").example() == ({}, DataInfo((1, 8, 8), 10))
    assert get_adapter("simplecnn").example()[1] == DataInfo((1, 8, 8), 10)
    assert get_adapter("resnet20").example() == ({}, DataInfo((3, 16, 16), 7))
