"""MLICallback with the real Lightning 2.x on a tiny model, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from mliscan.data import load_dataset  # noqa: E402
from mliscan.integrations.lightning import (  # noqa: E402
    MLICallback,
    MLIGateError,
    ShardedStrategyError,
    sharded_strategy,
)
from mliscan.spec import DataSpec  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def _loader(generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
    ds = load_dataset(DataSpec("digits", limit=300))
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(ds.inputs, ds.targets),
        batch_size=50,
        shuffle=True,
        generator=generator,
    )


def _trainer(tmp_path: Path, callback: MLICallback | None, logger=None, **kw):
    settings = {
        "max_epochs": 3,
        "default_root_dir": tmp_path,
        "callbacks": [] if callback is None else [callback],
        "logger": logger if logger is not None else pl.loggers.CSVLogger(tmp_path),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "accelerator": "cpu",
        **kw,
    }
    return pl.Trainer(**settings)


def _mli_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of a CSVLogger's metrics.csv that hold a measurement."""
    import csv

    with open(folder / "metrics.csv") as f:
        return [row for row in csv.DictReader(f) if row.get("mli/min_delta")]


def test_callback_measures_logs_and_writes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cb = MLICallback(max_examples=200, alphas=5, every_n_epochs=2)
    _trainer(tmp_path, cb).fit(model, _loader())
    r = cb.result
    assert r is not None and r.loss[-1] < r.loss[0]
    folder = cb.written[0].parent
    record = json.loads((folder / "mli.json").read_text())
    assert record["min_delta"] == pytest.approx(r.min_delta, abs=1e-12)
    assert record["data"]["examples"] == 200
    # the files are an ordinary pair: mliscan compare reads them and agrees
    import mliscan

    ds = load_dataset(DataSpec("digits", limit=300))
    again = mliscan.compare(
        folder / "init.safetensors",
        folder / "final.safetensors",
        model=model.net,
        data=(ds.inputs, ds.targets),
        alphas=5,
        gauss=False,
    )
    assert again.distance == pytest.approx(r.distance, rel=1e-9)
    from mliscan.checkpoints import load_checkpoint

    written = load_checkpoint(folder / "init.safetensors").tensors  # theta_0, network's names
    assert torch.equal(written["1.weight"], start["net.1.weight"])
    # the CI story: the written pair gated by `mliscan check` with the plain network
    (tmp_path / "tinynet.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(16, 10))\n"
    )
    (tmp_path / "pyproject.toml").write_text(
        '[tool.mliscan.check]\nmodel = "tinynet:make"\nmax-barrier = 100.0\n'
        'data = "digits"\ndata-limit = 300\nalphas = 5\n'
    )
    import os
    import subprocess
    import sys

    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mliscan.cli.app",
            "check",
            str(folder / "init.safetensors"),
            str(folder / "final.safetensors"),
            "-q",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "PASS" in p.stdout
    rows = _mli_rows(folder)  # through the trainer's logger: epoch 2 and the end of fit
    assert [int(r["step"]) for r in rows] == [12, 18]
    assert float(rows[-1]["mli/barrier"]) == pytest.approx(r.barrier)


def test_callback_fails_the_run_when_asked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = MLICallback(max_examples=100, alphas=3, max_delta=0.0, fail_on_nonmonotonic=True, tol=0.0)
    model = Tiny()
    # a path made non-monotonic on purpose: a loss that rises at the end
    cb.settings.loss = lambda out, y: -torch.nn.functional.cross_entropy(out, y, reduction="none")
    with pytest.raises(MLIGateError, match="MLI check failed"):
        _trainer(tmp_path, cb).fit(model, _loader())


def test_init_kept_as_a_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = MLICallback(max_examples=100, alphas=3, save_init="file", out_dir=tmp_path / "mli")
    _trainer(tmp_path, cb).fit(Tiny(), _loader())
    assert cb.init is None and (tmp_path / "mli" / "init.safetensors").is_file()
    assert cb.result.distance > 0


def test_one_measurement_per_epoch(tmp_path: Path) -> None:
    """every_n_epochs=1: the last epoch's measurement is the final one, not a second."""
    torch.manual_seed(0)
    cb = MLICallback(max_examples=100, alphas=3, every_n_epochs=1)
    _trainer(tmp_path, cb).fit(Tiny(), _loader())
    rows = _mli_rows(cb.written[0].parent)
    assert [int(r["step"]) for r in rows] == [6, 12, 18]


def test_theta0_survives_a_resume(tmp_path: Path) -> None:
    """theta_0 is the callback's state (like ModelCheckpoint's): fit, save, resume with
    ckpt_path=, and init.safetensors is still the original initialisation."""
    from mliscan.checkpoints import load_checkpoint

    torch.manual_seed(0)
    model = Tiny()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    first = _trainer(tmp_path / "a", MLICallback(max_examples=100, alphas=3), max_epochs=1)
    first.fit(model, _loader())
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    saved = torch.load(tmp_path / "epoch1.ckpt", weights_only=True)["callbacks"]["MLICallback"]
    assert torch.equal(saved["init"]["net.1.weight"], theta0["net.1.weight"])

    torch.manual_seed(1)  # another module: every weight comes from the checkpoint
    cb = MLICallback(max_examples=100, alphas=3, out_dir=tmp_path / "mli")
    resumed = _trainer(tmp_path / "b", cb, max_epochs=2)
    resumed.fit(Tiny(), _loader(), ckpt_path=tmp_path / "epoch1.ckpt")
    written = load_checkpoint(tmp_path / "mli" / "init.safetensors").tensors
    for k, v in theta0.items():
        assert torch.equal(written[k.removeprefix("net.")], v), k
    assert cb.result.distance > 0

    # a checkpoint without the callback's state: theta_0 is the resumed weights, said aloud
    plain = _trainer(tmp_path / "c", None, max_epochs=1)
    plain.fit(Tiny(), _loader())
    plain.save_checkpoint(tmp_path / "plain.ckpt")
    later = _trainer(tmp_path / "d", MLICallback(max_examples=100, alphas=3), max_epochs=2)
    with pytest.warns(UserWarning, match="holds no MLICallback state"):
        later.fit(Tiny(), _loader(), ckpt_path=tmp_path / "plain.ckpt")


def test_init_file_survives_a_resume(tmp_path: Path) -> None:
    from mliscan.checkpoints import load_checkpoint

    torch.manual_seed(0)
    model = Tiny()
    theta0 = model.net[1].weight.detach().clone()
    cb = MLICallback(max_examples=100, alphas=3, save_init="file", out_dir=tmp_path / "one")
    first = _trainer(tmp_path, cb, max_epochs=1)
    first.fit(model, _loader())
    first.save_checkpoint(tmp_path / "e1.ckpt")
    cb2 = MLICallback(max_examples=100, alphas=3, save_init="file", out_dir=tmp_path / "two")
    _trainer(tmp_path, cb2, max_epochs=2).fit(Tiny(), _loader(), ckpt_path=tmp_path / "e1.ckpt")
    assert cb2.init_file == (tmp_path / "one" / "init.safetensors").resolve()
    written = load_checkpoint(tmp_path / "two" / "init.safetensors").tensors
    assert torch.equal(written["1.weight"], theta0)


class DictTiny(Tiny):
    steps = 0

    def training_step(self, batch, _):
        DictTiny.steps += 1
        return torch.nn.functional.cross_entropy(self(batch["x"]), batch["y"])


def _dict_loader() -> torch.utils.data.DataLoader:
    ds = load_dataset(DataSpec("digits", limit=100))
    rows = [{"x": x, "y": y} for x, y in zip(ds.inputs, ds.targets, strict=True)]
    return torch.utils.data.DataLoader(rows, batch_size=50)


def test_batch_format_checked_before_training(tmp_path: Path) -> None:
    DictTiny.steps = 0
    cb = MLICallback(max_examples=100, alphas=3)
    with pytest.raises(TypeError, match=r"dict with keys 'x', 'y'.*inputs=lambda batch"):
        _trainer(tmp_path, cb).fit(DictTiny(), _dict_loader())
    assert DictTiny.steps == 0 and not list(tmp_path.rglob("init.safetensors"))
    cb = MLICallback(max_examples=100, alphas=3, inputs=lambda b: (b["x"], b["y"]))
    _trainer(tmp_path, cb, max_epochs=1).fit(DictTiny(), _dict_loader())
    assert cb.result.distance > 0
    bad = MLICallback(max_examples=100, alphas=3, inputs=lambda b: (b["inputs"], b["y"]))
    with pytest.raises(TypeError, match="inputs= must turn a batch into"):
        _trainer(tmp_path, bad, max_epochs=1).fit(DictTiny(), _dict_loader())


class NoForward(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(64, 10)

    def training_step(self, batch, _):
        pytest.fail("trained before the module was checked")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_module_without_forward_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"NoForward defines no forward\(\)"):
        _trainer(tmp_path, MLICallback(max_examples=50, alphas=3)).fit(NoForward(), _loader())


def test_the_callback_leaves_training_unchanged(tmp_path: Path) -> None:
    """Sampling at the start of fit restores every random state it touched: the same run
    with and without the callback ends at the same weights (shuffled batches, a seeded
    loader generator)."""
    finals = []
    for callback in (None, MLICallback(max_examples=120, alphas=3)):
        torch.manual_seed(0)
        model = Tiny()
        _trainer(tmp_path, callback, max_epochs=2).fit(
            model, _loader(torch.Generator().manual_seed(3))
        )
        finals.append(model.state_dict())
    for k, v in finals[0].items():
        assert torch.equal(v, finals[1][k]), k


class RankRecorder(MLICallback):
    """Marks which processes measured and which raised (forked ranks share the folder)."""

    def __init__(self, marks: Path, **kw) -> None:
        super().__init__(**kw)
        self.marks = marks

    def _measure(self, trainer, pl_module):
        (self.marks / f"measured-{trainer.global_rank}").touch()
        return super()._measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        try:
            super().on_train_end(trainer, pl_module)
        except MLIGateError:
            (self.marks / f"failed-{trainer.global_rank}").touch()
            raise


def test_rank_zero_only_under_ddp_with_two_processes(tmp_path: Path) -> None:
    """Two CPU processes (Lightning's fork-based DDP): rank zero measures and writes; the
    gate's verdict reaches both ranks.

    The forked ranks run in a fresh pytest process: forked from this one, after earlier
    tests ran OpenMP parallel regions, a rank can hang in OpenMP (libgomp is not fork-safe)."""
    if os.environ.get("MLISCAN_DDP_RANKS") != "1":
        import subprocess
        import sys

        test = f"{Path(__file__).resolve()}::test_rank_zero_only_under_ddp_with_two_processes"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
            env={**os.environ, "MLISCAN_DDP_RANKS": "1"},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        return
    marks = tmp_path / "marks"
    marks.mkdir()
    torch.manual_seed(0)

    def trainer(cb):
        return _trainer(tmp_path, cb, max_epochs=1, strategy="ddp_notebook", devices=2)

    cb = RankRecorder(marks, max_examples=60, alphas=3, every_n_epochs=1, out_dir=tmp_path / "m")
    trainer(cb).fit(Tiny(), _loader())
    assert sorted(p.name for p in marks.iterdir()) == ["measured-0"]
    assert (tmp_path / "m" / "mli.json").is_file()

    for p in marks.iterdir():
        p.unlink()
    failing = RankRecorder(marks, max_examples=60, alphas=3, max_delta=0.0, out_dir=tmp_path / "n")
    failing.settings.loss = lambda out, y: (
        -torch.nn.functional.cross_entropy(out, y, reduction="none")
    )
    with pytest.raises(Exception, match="MLI check failed"):
        trainer(failing).fit(Tiny(), _loader())
    assert sorted(p.name for p in marks.iterdir()) == ["failed-0", "failed-1", "measured-0"]


def test_sharded_strategies_are_refused() -> None:
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    assert sharded_strategy(FSDPStrategy()) == "FSDPStrategy"
    assert sharded_strategy(DDPStrategy()) is None
    # DeepSpeed is not installed here: the real class, its configuration set by hand
    stage3 = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    stage3.config = {"zero_optimization": {"stage": 3}}
    assert sharded_strategy(stage3) == "DeepSpeedStrategy (ZeRO stage 3)"
    stage3.config = {"zero_optimization": {"stage": 2}}  # sharded optimizer state only
    assert sharded_strategy(stage3) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's FSDP needs a GPU")
def test_fsdp_fit_is_refused_before_training(tmp_path: Path) -> None:
    cb = MLICallback(max_examples=100, alphas=3)
    trainer = _trainer(tmp_path, cb, accelerator="gpu", devices=1, strategy="fsdp")
    with pytest.raises(ShardedStrategyError, match=r"cannot run under FSDPStrategy.*DDP"):
        trainer.fit(Tiny(), _loader())
