"""One contract test over every registered adapter, plus adapter-specific checks."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from mliscan import registry
from mliscan.adapter import Adapter, DataInfo, load_into
from mliscan.errors import AdapterOptionError, CheckpointMismatchError

INFO = {"digits": DataInfo((1, 8, 8), 10), "cifar10": DataInfo((3, 32, 32), 10)}


@pytest.mark.parametrize("name", registry.names())
def test_adapter_contract(name: str) -> None:
    adapter = registry.get_adapter(name)
    assert isinstance(adapter, Adapter)
    assert adapter.name == name and adapter.description
    given, info = adapter.example()
    opts = adapter.parse_options(given)
    torch.manual_seed(0)
    module = adapter.build(opts, info)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    # the file's names (unmap_keys) map back onto the module and load strictly
    file_names = adapter.unmap_keys(state)
    load_into(module, adapter.map_keys(file_names, opts), "self", name)
    torch.manual_seed(1)
    raw_x, raw_y = adapter.example_batch(info, 5)
    x = adapter.prepare_inputs(raw_x)
    y = adapter.prepare_targets(x, raw_y)
    module.eval()
    out = module(x)
    loss = adapter.loss(out, y)
    assert loss.shape == (5,) and torch.isfinite(loss).all()
    rows = adapter.logits(out)
    assert rows.dim() == 2 and rows.shape[0] % 5 == 0  # one or more logit vectors per example
    ok = adapter.correct(out, y)
    assert ok is None or ok.shape == (5,)
    assert isinstance(adapter.bn_modules(module), list)
    assert adapter.train_defaults.lr > 0
    # options round-trip through JSON metadata
    assert adapter.parse_options(adapter.options_to_dict(opts)) == opts
    with pytest.raises(AdapterOptionError, match="no option"):
        adapter.parse_options({"no_such_option": 1})
    # the same seed gives the same initialisation
    torch.manual_seed(0)
    again = adapter.build(opts, info).state_dict()
    assert all(torch.equal(again[k], state[k]) for k in state)


@pytest.mark.parametrize("name", registry.names())
def test_declared_flags_set_options_the_adapter_has(name: str) -> None:
    """Each flag an adapter declares is a command-line option (registry.arch_flags) and
    sets an option of its own, with the same choices; its report label is text."""
    adapter = registry.get_adapter(name)
    fields = {f.name: f for f in dataclasses.fields(adapter.Options)}
    for flag in adapter.flags:
        assert flag in registry.arch_flags(), f"{name}: --{flag.name} is not an option"
        key = flag.key or flag.name
        assert key in fields, f"{name}: --{flag.name} sets {key}, not an option of {name}"
        parse = fields[key].metadata.get("parse")
        if flag.boolean:
            assert isinstance(fields[key].default, bool)
        if flag.choices is not None:
            assert [parse(c) for c in flag.choices] == list(flag.choices)
            with pytest.raises(ValueError):
                parse("no-such-choice")
    options = adapter.options_to_dict(adapter.parse_options(adapter.example()[0]))
    assert isinstance(adapter.report_label(options), str)


def test_every_flag_is_declared_by_an_adapter() -> None:
    declared = {f for name in registry.names() for f in registry.get_adapter(name).flags}
    assert declared == set(registry.arch_flags())


def test_mlp_keys_are_those_of_a_plain_sequential() -> None:
    adapter = registry.get_adapter("mlp")
    m = adapter.build(adapter.parse_options({"hidden": "128,128"}), INFO["digits"])
    assert list(m.state_dict()) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]
    bn = adapter.build(adapter.parse_options({"hidden": "128", "bn": "on"}), INFO["digits"])
    assert "1.running_mean" in bn.state_dict() and "3.weight" in bn.state_dict()
    assert adapter.infer_options(bn.state_dict()) == {"hidden": (128,), "bn": True}


def test_load_into_lists_all_problems() -> None:
    adapter = registry.get_adapter("mlp")
    m = adapter.build(adapter.parse_options({"hidden": "4"}), INFO["digits"])
    state = dict(m.state_dict())
    state.pop("2.bias")
    state["zzz"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 63)
    with pytest.raises(CheckpointMismatchError) as info:
        load_into(m, state, "f.safetensors", "mlp")
    msg = str(info.value)
    assert "missing keys: 2.bias" in msg and "unexpected keys: zzz" in msg and "0.weight" in msg


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_resnet_depths_and_parameter_counts(depth: int) -> None:
    adapter = registry.get_adapter(f"resnet{depth}")
    m = adapter.build(adapter.parse_options({}), INFO["cifar10"])
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # depth counts the convolutions and the classifier
    if depth == 20:  # He et al. 2016, Table 6: 0.27M parameters
        assert sum(p.numel() for p in m.parameters()) == pytest.approx(0.27e6, rel=0.02)


def test_resnet_init_schemes() -> None:
    a = registry.get_adapter("resnet20")
    bi = a.build(a.parse_options({"init": "block-identity"}), INFO["cifar10"])
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in bi.layers)
    nbi = a.build(a.parse_options({"bn": "off", "init": "block-identity"}), INFO["cifar10"])
    assert all(float(b.conv2.weight.detach().abs().sum()) == 0 for b in nbi.layers)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in nbi.modules())
    fx = a.build(a.parse_options({"bn": "off", "init": "fixup"}), INFO["cifar10"])
    assert float(fx.fc.weight.detach().abs().sum()) == 0
    assert all(float(b.conv2.weight.detach().abs().sum()) == 0 for b in fx.layers)
    x = torch.randn(4, 3, 32, 32)
    # block-identity and Fixup start as identity residual blocks: output only through the stem
    assert torch.isfinite(fx(x)).all()
    with pytest.raises(AdapterOptionError, match="--no-bn"):
        a.parse_options({"init": "fixup"})


def test_no_bare_adapters_module_is_imported() -> None:
    import mliscan.adapters.mlp  # noqa: F401

    registry.all_adapters()
    assert "adapters" not in sys.modules
    assert "mliscan.adapters" in sys.modules
