"""Training writes a loadable, self-describing init/final pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mliscan.adapter import DataInfo
from mliscan.checkpoints import load_checkpoint
from mliscan.errors import UsageError
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


def test_float64_training_draws_trains_and_writes_in_float64(tmp_path: Path) -> None:
    spec = _spec(dtype="float64", arch_options={"hidden": "16", "bn": True}, optimizer="adam")
    record = train(spec, tmp_path)
    assert torch.get_default_dtype() == torch.float32  # restored
    init = load_checkpoint(tmp_path / "init.safetensors").tensors
    final = load_checkpoint(tmp_path / "final.safetensors").tensors
    for tensors in (init, final):
        assert tensors["0.weight"].dtype == tensors["1.running_var"].dtype == torch.float64
    # the initial weights are drawn in float64, not float32 weights widened
    adapter = get_adapter("mlp")
    torch.manual_seed(0)
    fresh = adapter.build(
        adapter.parse_options({"hidden": "16", "bn": True}), DataInfo((1, 8, 8), 10)
    )
    assert not torch.equal(init["0.weight"], fresh.state_dict()["0.weight"].double())
    assert record["config"]["dtype"] == "float64"
    assert "dtype" not in _spec().to_dict()  # float32 runs record the config as before
    with pytest.raises(UsageError, match="float64"):
        _spec(dtype="float64", amp=True)


def test_optimizers_and_bn(tmp_path: Path) -> None:
    """Each optimizer's hallmark on its first step (one batch, one epoch): Adam moves every
    weight with a gradient by lr (m/sqrt(v) = sign(g)), RMSprop by lr/sqrt(1 - 0.99) = 10 lr,
    plain SGD by lr |g|, which differs from weight to weight."""
    lr = 1e-3
    moved = {}
    for opt in ("sgd", "adam", "rmsprop"):
        spec = _spec(
            optimizer=opt,
            lr=lr,
            epochs=1,
            data=DataSpec("digits", limit=50),
            arch_options={"hidden": "16", "bn": True},
        )
        train(spec, tmp_path / opt)
        a = load_checkpoint(tmp_path / opt / "init.safetensors").tensors
        b = load_checkpoint(tmp_path / opt / "final.safetensors").tensors
        assert "1.running_mean" in b
        step = (b["0.weight"].double() - a["0.weight"].double()).abs()
        moved[opt] = step[step > 0]
    for opt, size in (("adam", lr), ("rmsprop", 10 * lr)):
        # |g| / (|g| + eps) is 1 but for gradients near eps: nearly every weight moves by size
        near = ((moved[opt] - size).abs() <= 1e-3 * size).double().mean()
        assert moved[opt].numel() > 100 and float(near) > 0.98, opt
        assert float(moved[opt].max()) <= size * (1 + 1e-4), opt  # float32 weights
    assert float(moved["sgd"].std() / moved["sgd"].mean()) > 0.1  # lr |g| varies


def _tiny_mnist(root: Path) -> None:
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3])
            + b"".join(d.to_bytes(4, "big") for d in images.shape)
            + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes()
        )


LM_OPTIONS = {
    "lstm-lm": {"emb": "16", "hidden": "16", "layers": "1"},
    "transformer-lm": {"dim": "16", "heads": "2", "ff": "32", "layers": "1"},
}


@pytest.mark.parametrize(
    "name",
    [
        "mlp",
        "autoencoder",
        "simplecnn",
        "lenet5",
        "resnet20",
        "alexnet",
        "vgg16",
        "vgg19",
        "lstm-lm",
        "transformer-lm",
    ],
)
def test_every_architecture_trains_and_compares_without_arch(
    name: str, tmp_path: Path, capsys
) -> None:
    from tests.conftest import run_cli

    if name in ("lenet5", "autoencoder"):
        _tiny_mnist(tmp_path / "data")
        data = DataSpec("mnist", data_dir=str(tmp_path / "data"))
    elif name in LM_OPTIONS:  # WikiText-2's layout, filled with the bundled tiny corpus
        import shutil

        from mliscan.text import BUNDLED_TINYTEXT

        shutil.copytree(BUNDLED_TINYTEXT, tmp_path / "data" / "wikitext-2")
        data = DataSpec("wikitext2", data_dir=str(tmp_path / "data"), limit=8, seq_len=12)
    else:
        data = DataSpec("digits", limit=40)
    options = {"encoder": "32,8"} if name == "autoencoder" else LM_OPTIONS.get(name, {})
    rec = train(
        TrainSpec(arch=name, arch_options=options, data=data, epochs=1, batch_size=16, lr=0.01),
        tmp_path / "run",
    )
    if name in ("lenet5", *LM_OPTIONS):
        assert rec["final_test_accuracy"] is not None  # MNIST and WikiText have a test split
    extra = ["--data-dir", tmp_path / "data"] if data.data_dir else []
    code, out, err = run_cli(
        [
            "compare",
            tmp_path / "run" / "init.safetensors",
            tmp_path / "run" / "final.safetensors",
            "--alphas",
            "3",
            "-q",
            "--json",
            "-",
            *extra,
        ],
        capsys,
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["arch"] == name and r["gauss_length"] is not None
    assert (r["accuracy"] is None) == (name == "autoencoder")


def test_augmentation_and_amp(tmp_path: Path) -> None:
    from mliscan.train import crop_flip

    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = crop_flip(x, g)
    assert y.shape == x.shape and not torch.equal(x, y)
    spec = TrainSpec(
        arch="simplecnn",
        data=DataSpec("digits", limit=64),
        epochs=1,
        batch_size=16,
        augment=True,
        amp=True,
    )
    rec = train(spec, tmp_path / "r")
    assert rec["config"]["augment"] and rec["config"]["amp"]
    # the same seed gives the same augmented run
    rec2 = train(spec, tmp_path / "r2")
    assert rec["final_train_loss"] == rec2["final_train_loss"]


def test_diverging_training_is_a_result_not_a_crash(tmp_path: Path, capsys) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        out,
        "--lr",
        "1e30",
        "--epochs",
        "3",
        "--data-limit",
        "100",
        "--batch-size",
        "20",
        "--hidden",
        "8",
        "-q",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "diverged" in err and "Traceback" not in err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "diverged" and record["diverged_at_epoch"] == 1
    assert (out / "init.safetensors").exists() and not (out / "final.safetensors").exists()
    code, _, err = run_cli(args, capsys)  # a rerun does not retry it...
    assert code == 1 and "already trained" in err and "--retry-failed" in err
    code, _, err = run_cli([*args, "--retry-failed"], capsys)  # ...unless asked
    assert code == 1 and "NaN/Inf" in err


def test_sweep_records_a_divergence_and_goes_on(tmp_path: Path, capsys) -> None:
    from mliscan.sweep import read_index
    from tests.conftest import run_cli

    args = [
        "train",
        "--out",
        tmp_path,
        "--lr",
        "0.05,1e30",
        "--epochs",
        "2",
        "--data-limit",
        "100",
        "--batch-size",
        "20",
        "--hidden",
        "8",
        "-q",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "1 diverged" in err
    statuses = sorted(r["status"] for r in read_index(tmp_path))
    assert statuses == ["complete", "diverged"]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "(2 were already done; 1 diverged)" in err


def test_finished_single_run_is_not_retrained(tmp_path: Path, capsys) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        out,
        "--epochs",
        "1",
        "--data-limit",
        "100",
        "--batch-size",
        "20",
        "--hidden",
        "8",
        "-q",
    ]
    assert run_cli(args, capsys)[0] == 0
    stamp = (out / "final.safetensors").stat().st_mtime_ns
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "already trained" in err
    assert (out / "final.safetensors").stat().st_mtime_ns == stamp


def test_everything_is_checked_before_init_is_written(tmp_path: Path, capsys) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "cifar-run"
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    import pickle

    import numpy as np

    for i in range(1, 6):  # the training batches, but no test_batch
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    code, _, err = run_cli(
        [
            "train",
            "--out",
            out,
            "--arch",
            "simplecnn",
            "--data",
            "cifar10",
            "--data-dir",
            tmp_path / "data",
            "--epochs",
            "1",
            "-q",
        ],
        capsys,
    )
    assert code == 2 and "test_batch" in err
    assert not (out / "init.safetensors").exists()
    code, _, err = run_cli(
        ["train", "--out", tmp_path / "bn", "--bn", "--data-limit", "1", "--epochs", "1", "-q"],
        capsys,
    )
    assert code == 2 and "at least 2 examples" in err
    assert not (tmp_path / "bn" / "init.safetensors").exists()


def test_a_finished_run_of_other_settings_is_never_replaced(tmp_path: Path, capsys) -> None:
    """train --out over a finished run with other settings is refused, naming what differs;
    --overwrite trains again in its place (the old run's kept checkpoints go with it)."""
    from tests.conftest import run_cli

    out = tmp_path / "run"
    args = ["train", "--out", out, "--data-limit", "60", "--batch-size", "30", "--hidden", "4"]
    code, _, err = run_cli([*args, "--epochs", "2", "--save-every", "1", "-q"], capsys)
    assert code == 0, err
    kept = out / "checkpoints" / "epoch-1.safetensors"
    stamp = (out / "final.safetensors").stat().st_mtime_ns
    code, _, err = run_cli([*args, "--epochs", "1", "--lr", "0.05", "-q"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "with other settings: lr 0.1 there, 0.05 here; epochs 2 there, 1 here" in err
    assert "--overwrite" in err
    assert (out / "final.safetensors").stat().st_mtime_ns == stamp and kept.is_file()
    code, _, err = run_cli([*args, "--epochs", "1", "--lr", "0.05", "--overwrite", "-q"], capsys)
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["lr"] == 0.05 and not kept.exists()
    # the library refuses the same way; a setting that changes no number is no difference
    with pytest.raises(UsageError, match=r"lr 0\.05 there, 0\.2 here"):
        train(_spec(lr=0.2), out)
    from mliscan.train import finished_run, run_differences

    config = {**record["config"], "device": "cuda"}
    same = TrainSpec(**{**config, "data": DataSpec(**config["data"]), "save_every": 3})
    assert run_differences(finished_run(out), same) == []
