"""Training writes a loadable, self-describing init/final pair."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mliscan.adapter import DataInfo
from mliscan.checkpoints import load_checkpoint
from mliscan.registry import get_adapter
from mliscan.spec import DataSpec
from mliscan.train import TrainSpec, train


def _spec(**kw) -> TrainSpec:
    base = dict(
        arch_options={"hidden": "16"}, data=DataSpec("digits", limit=200), epochs=2, batch_size=50
    )
    base.update(kw)
    return TrainSpec(**base)


def test_init_saved_before_first_step_and_metadata(tmp_path: Path) -> None:
    record = train(_spec(seed=3), tmp_path)
    init = load_checkpoint(tmp_path / "init.safetensors")
    final = load_checkpoint(tmp_path / "final.safetensors")
    adapter = get_adapter("mlp")
    torch.manual_seed(3)
    fresh = adapter.build(adapter.parse_options({"hidden": "16"}), DataInfo((1, 8, 8), 10))
    assert all(torch.equal(init.tensors[k], v) for k, v in fresh.state_dict().items())
    assert not torch.equal(init.tensors["0.weight"], final.tensors["0.weight"])
    assert init.metadata["arch"] == "mlp"
    assert init.metadata["arch_options"] == {"hidden": [16], "activation": "relu", "bn": False}
    assert init.metadata["data"]["name"] == "digits"
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "complete" and run["config"]["seed"] == 3
    assert len(run["history"]) == 2 and run == json.loads(json.dumps(record))
    assert 0 < run["final_train_loss"] < 3 and 0 <= run["final_train_accuracy"] <= 1


def test_same_seed_gives_byte_identical_init(tmp_path: Path) -> None:
    train(_spec(seed=7, epochs=1), tmp_path / "a")
    train(_spec(seed=7, epochs=1, lr=0.5), tmp_path / "b")
    train(_spec(seed=8, epochs=1), tmp_path / "c")
    a = (tmp_path / "a" / "init.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "init.safetensors").read_bytes()
    assert a != (tmp_path / "c" / "init.safetensors").read_bytes()


def test_optimizers_and_bn(tmp_path: Path) -> None:
    for opt in ("sgd", "adam", "rmsprop"):
        rec = train(
            _spec(optimizer=opt, lr=0.01, arch_options={"hidden": "16", "bn": True}), tmp_path / opt
        )
        assert rec["config"]["optimizer"] == opt
        assert "1.running_mean" in load_checkpoint(tmp_path / opt / "final.safetensors").tensors
