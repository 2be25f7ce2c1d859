"""MLICallback with the real Lightning 2.x on a tiny model, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from mliscan.data import load_dataset  # noqa: E402
from mliscan.integrations.lightning import MLICallback, MLIGateError  # noqa: E402
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


def _loader() -> torch.utils.data.DataLoader:
    ds = load_dataset(DataSpec("digits", limit=300))
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(ds.inputs, ds.targets), batch_size=50, shuffle=True
    )


def _trainer(tmp_path: Path, callback: MLICallback, logger=None):
    return pl.Trainer(
        max_epochs=3,
        default_root_dir=tmp_path,
        callbacks=[callback],
        logger=logger if logger is not None else pl.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )


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
    metrics = (folder / "metrics.csv").read_text()
    assert "mli/min_delta" in metrics and "mli/barrier" in metrics
    assert metrics.count("\n") >= 3  # epoch 2 and the end of fit


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
