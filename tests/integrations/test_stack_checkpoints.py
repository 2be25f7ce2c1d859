"""Checkpoints from the common training stacks, read without running code from them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mliscan.checkpoints import load_checkpoint
from tests.conftest import run_cli


def _mlp_state(seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    return {prefix + k: v.clone() for k, v in net.state_dict().items()}


def test_lightning_ckpt_written_by_lightning(tmp_path: Path, capsys) -> None:
    pl = pytest.importorskip("lightning.pytorch")

    class Module(pl.LightningModule):
        def __init__(self, lr: float = 0.1, note: str = "x") -> None:
            super().__init__()
            self.save_hyperparameters()  # stored in the .ckpt as an AttributeDict
            self.model = torch.nn.Sequential(
                torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)
            )

        def forward(self, x):
            return self.model(x.flatten(1))

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    from mliscan.data import load_dataset
    from mliscan.spec import DataSpec

    ds = load_dataset(DataSpec("digits", limit=100))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(ds.inputs, ds.targets), batch_size=50
    )
    trainer = pl.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    module = Module()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "init.ckpt")  # before fit: the initialisation
    trainer.fit(module, loader)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = load_checkpoint(tmp_path / "last.ckpt")
    assert set(ckpt.tensors) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert any("LightningModule attribute prefix 'model.'" in n for n in ckpt.notes)
    code, out, err = run_cli(
        [
            "compare",
            tmp_path / "init.ckpt",
            tmp_path / "last.ckpt",
            "--arch",
            "mlp",
            "--hidden",
            "8",
            "--data-limit",
            "100",
            "--alphas",
            "3",
            "--no-gauss",
            "-q",
            "--json",
            "-",
        ],
        capsys,
    )
    assert code == 0, err  # the network's own keys: mliscan's mlp of the same widths
    record = json.loads(out)
    assert record["distance"] > 0 and record["loss"][-1] < record["loss"][0]


def test_timm_train_py_outputs_with_args_and_ema(tmp_path: Path, capsys) -> None:
    state = _mlp_state(0)
    ema = {k: v * 0.5 for k, v in state.items()}
    ns = argparse.Namespace(model="mlp", lr=0.1, epochs=3)
    for name, sd in (("checkpoint-0.pth.tar", state), ("model_best.pth.tar", _mlp_state(1))):
        torch.save(
            {
                "epoch": 3,
                "arch": "mlp",
                "state_dict": sd,
                "state_dict_ema": ema,
                "optimizer": {"state": {}, "param_groups": []},
                "args": ns,
                "version": 2,
                "metric": 0.9,
            },
            tmp_path / name,
        )
    raw = load_checkpoint(tmp_path / "checkpoint-0.pth.tar")
    assert torch.equal(raw.tensors["0.weight"], state["0.weight"])
    averaged = load_checkpoint(tmp_path / "checkpoint-0.pth.tar", ema=True)
    assert torch.equal(averaged.tensors["0.weight"], ema["0.weight"])
    code, _, err = run_cli(
        [
            "compare",
            tmp_path / "checkpoint-0.pth.tar",
            tmp_path / "model_best.pth.tar",
            "--arch",
            "mlp",
            "--hidden",
            "8",
            "--data-limit",
            "50",
            "--alphas",
            "3",
            "--no-gauss",
            "-q",
            "--json",
            "-",
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run_cli(
        [
            "compare",
            tmp_path / "checkpoint-0.pth.tar",
            tmp_path / "model_best.pth.tar",
            "--ema",
            "--arch",
            "mlp",
            "--hidden",
            "8",
            "--data-limit",
            "50",
            "--alphas",
            "3",
            "--no-gauss",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err  # the EMA weights of both


def test_a_payload_is_still_refused(tmp_path: Path) -> None:
    from mliscan.errors import UnsafeCheckpointError

    class Payload:
        def __reduce__(self):
            return (print, ("never",))

    torch.save({"state_dict": _mlp_state(0), "args": Payload()}, tmp_path / "x.pth.tar")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(tmp_path / "x.pth.tar")


def test_hf_trainer_run_folder_first_and_last(tmp_path: Path, capsys) -> None:
    run = tmp_path / "out"
    for step, seed in ((500, 0), (1000, 1), (1500, 2)):
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True)
        save_file(_mlp_state(seed), str(d / "model.safetensors"))
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    code, _, err = run_cli(["compare", run, run, "--arch", "mlp", "-q"], capsys)
    assert code == 2 and "@first" in err and "@last" in err
    code, out, err = run_cli(
        [
            "compare",
            f"{run}@first",
            f"{run}@last",
            "--arch",
            "mlp",
            "--hidden",
            "8",
            "--data-limit",
            "50",
            "--alphas",
            "3",
            "--no-gauss",
            "-q",
            "--json",
            "-",
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["init"].endswith("checkpoint-500/model.safetensors")
    assert record["final"].endswith("checkpoint-1500/model.safetensors")


def test_torchvision_names_as_architectures(tmp_path: Path, capsys) -> None:
    from torchvision import models

    torch.manual_seed(0)
    a = models.get_model("resnet18", weights=None, num_classes=10).state_dict()
    torch.manual_seed(1)
    b = models.get_model("resnet18", weights=None, num_classes=10).state_dict()
    save_file({k: v.contiguous() for k, v in a.items()}, str(tmp_path / "a.safetensors"))
    save_file({k: v.contiguous() for k, v in b.items()}, str(tmp_path / "b.safetensors"))
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(
                {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]},
                f,
            )
    code, out, err = run_cli(
        [
            "compare",
            tmp_path / "a.safetensors",
            tmp_path / "b.safetensors",
            "--arch",
            "torchvision",
            "--arch-opt",
            "model=resnet18",
            "--data",
            "cifar10",
            "--data-dir",
            tmp_path / "data",
            "--alphas",
            "3",
            "--no-gauss",
            "-q",
            "--json",
            "-",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["arch_options"]["num_classes"] == 10
    code, _, err = run_cli(
        [
            "compare",
            tmp_path / "a.safetensors",
            tmp_path / "b.safetensors",
            "--arch",
            "torchvision",
            "--arch-opt",
            "model=nonet",
            "-q",
        ],
        capsys,
    )
    assert code == 2 and "no model named 'nonet'" in err
