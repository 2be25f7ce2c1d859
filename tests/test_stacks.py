"""Training stacks' layouts unwrapped: wrappers, prefixes, Lightning's attribute, EMA weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mliscan import stacks
from mliscan.errors import CheckpointFormatError

W = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2)}
P = Path("run.ckpt")


def test_nested_wrappers_are_unwrapped_and_noted() -> None:
    tensors, notes = stacks.unwrap_state_dict({"model": {"state_dict": W}, "epoch": 3}, P)
    assert tensors == W
    assert notes == ["unwrapped 'model'", "unwrapped 'state_dict'"]


def test_non_tensor_entries_beside_the_weights_are_dropped() -> None:
    tensors, notes = stacks.unwrap_state_dict({**W, "step": 7}, P)
    assert tensors == W and notes == []


@pytest.mark.parametrize("obj", [[1, 2], {"epoch": 3}, {"state_dict": {"lr": 0.1}}])
def test_no_state_dict_is_named(obj: object) -> None:
    with pytest.raises(CheckpointFormatError, match="holds no state dict"):
        stacks.unwrap_state_dict(obj, P)


def test_prefixes_are_stripped_in_any_nesting() -> None:
    prefixed = {f"_orig_mod.module.{k}": v for k, v in W.items()}
    tensors, stripped = stacks.strip_prefixes(prefixed)
    assert tensors == W and stripped == ["_orig_mod.", "module."]
    assert stacks.strip_prefixes({"module.a": W["0.bias"], "b": W["0.bias"]})[1] == []


def test_a_lightning_checkpoint_loses_its_module_attribute() -> None:
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in W.items()},
        "pytorch-lightning_version": "2.4.0",
        "hyper_parameters": {"lr": 0.1},
    }
    tensors, notes = stacks.training_state_dict(ckpt, P)
    assert tensors == W
    assert notes == [
        "unwrapped 'state_dict'",
        "stripped the LightningModule attribute prefix 'net.'",
    ]
    # the same keys outside a Lightning file are left as they are
    plain, _ = stacks.training_state_dict({"state_dict": ckpt["state_dict"]}, P)
    assert set(plain) == {"net.0.weight", "net.0.bias"}


def test_ema_weights_are_picked_or_refused() -> None:
    ema = {k: v * 0.5 for k, v in W.items()}
    tensors, _ = stacks.training_state_dict({"state_dict": W, "state_dict_ema": ema}, P, ema=True)
    assert all(torch.equal(tensors[k], ema[k]) for k in W)
    with pytest.raises(CheckpointFormatError, match=r"holds none .*drop --ema"):
        stacks.training_state_dict({"state_dict": W}, P, ema=True)
