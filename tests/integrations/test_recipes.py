"""The README's CI recipes (Lightning, Hugging Face Trainer), run with the real frameworks,
offline.

Each recipe is three README blocks between ``<!-- recipe: NAME -->`` and ``<!-- /recipe -->``:
the ``train.py`` lines, the ``pyproject.toml`` table and the workflow's steps. The lines of
``train.py`` run inside a script that defines what they take as given (the model, the data,
``args``); the table is the project's ``pyproject.toml``; the steps after the install (which
``tests/test_install.py`` runs) run in order in the project's folder, ``python`` and
``mliscan`` being this environment's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hubcache
from tests.conftest import REPO


def recipe(name: str) -> tuple[str, str, list[str]]:
    """The recipe's train.py lines, pyproject.toml and workflow step commands."""
    text = (REPO / "README.md").read_text()
    section = re.search(rf"<!-- recipe: {name} -->\n(.*?)<!-- /recipe -->", text, re.S)
    assert section, f"README.md lost its {name} recipe"
    blocks = dict(re.findall(r"```(python|toml|yaml)\n(.*?)```", section.group(1), re.S))
    steps = [
        line.strip().removeprefix("- run:").strip()
        for line in blocks["yaml"].splitlines()
        if line.strip().startswith("- run:")
    ]
    return blocks["python"], blocks["toml"], steps


def _run_steps(steps: list[str], project: Path) -> list[subprocess.CompletedProcess[str]]:
    assert steps[0].startswith("pip install") and "mliscan" in steps[0]
    mliscan = Path(sys.executable).with_name("mliscan")
    done = []
    for step in steps[1:]:
        words = step.split()
        if words[0] == "python":
            words[0] = sys.executable
        elif words[0] == "mliscan":
            words[0] = str(mliscan) if mliscan.exists() else shutil.which("mliscan") or ""
        p = subprocess.run(
            words,
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
            env={**_offline(), "PYTHONPATH": str(project)},
        )
        done.append(p)
    return done


def _offline() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


LIGHTNING_SCRIPT = '''\
"""train.py of a Lightning repository: the README's lines after this preamble."""
import argparse

import lightning
import torch

from mliscan.data import load_dataset
from mliscan.integrations.lightning import MLICallback
from mliscan.spec import DataSpec
from mypkg.models import make_net

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()


class Classifier(lightning.pytorch.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = make_net()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Digits(lightning.pytorch.LightningDataModule):
    def train_dataloader(self):
        ds = load_dataset(DataSpec("digits"))
        pairs = torch.utils.data.TensorDataset(ds.inputs, ds.targets)
        return torch.utils.data.DataLoader(pairs, batch_size=64, shuffle=True)


torch.manual_seed(0)
model, datamodule = Classifier(), Digits()
'''

MODELS = """\
import torch


def make_net():
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
"""


def _checked(done: list[subprocess.CompletedProcess[str]], project: Path) -> str:
    train, check = done
    assert train.returncode == 0, train.stderr[-3000:]
    assert check.returncode in (0, 1), check.stderr[-3000:]  # a verdict, not bad input (2)
    assert "require-monotonic" in check.stdout or "monotonic" in check.stdout, check.stdout
    assert (project / "mli.xml").is_file()
    return check.stdout


def test_lightning_recipe(tmp_path: Path) -> None:
    lines, toml, steps = recipe("lightning")
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(MODELS)
    (tmp_path / "train.py").write_text(LIGHTNING_SCRIPT + lines)
    (tmp_path / "pyproject.toml").write_text(toml)
    out = _checked(_run_steps(steps, tmp_path), tmp_path)
    assert "max-barrier" in out or "barrier" in out
    assert (tmp_path / "runs" / "ci" / "mli" / "mli.json").is_file()


TRANSFORMERS_SCRIPT = '''\
"""train.py of a Hugging Face repository: the README's lines after this preamble."""
import argparse

import torch
import transformers

from mliscan.integrations.transformers import MLITrainerCallback

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

tokenizer = transformers.AutoTokenizer.from_pretrained("tokenizer", local_files_only=True)
ids = tokenizer(open("data/train.txt").read(), add_special_tokens=False)["input_ids"]
rows = torch.tensor(ids[: len(ids) // 64 * 64]).view(-1, 64)[:64]
train_dataset = [{"input_ids": r, "labels": r.clone()} for r in rows]
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_config(
    transformers.AutoConfig.from_pretrained("tokenizer/config.json")
)
'''


def test_transformers_recipe(tmp_path: Path) -> None:
    lines, toml, steps = recipe("transformers")
    (tmp_path / "data").mkdir()
    words = hubcache.CORPUS.split()
    (tmp_path / "data" / "train.txt").write_text(" ".join(words[:1100]) + "\n")  # 16 x 64
    hubcache.tokenizer(tmp_path / "tokenizer")  # the model's tokenizer and config, offline
    hubcache.tiny_config("gpt2").save_pretrained(str(tmp_path / "tokenizer"))
    (tmp_path / "train.py").write_text(TRANSFORMERS_SCRIPT + lines)
    (tmp_path / "pyproject.toml").write_text(toml)
    _checked(_run_steps(steps, tmp_path), tmp_path)
    folder = tmp_path / "runs" / "ci" / "mli"
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


@pytest.mark.parametrize("name", ["lightning", "transformers"])
def test_recipes_install_mliscan_as_the_install_section_does(name: str) -> None:
    _, _, steps = recipe(name)
    assert re.fullmatch(rf'pip install "mliscan\[{name}\] @ git\+https://\S+@v[\d.]+"', steps[0])
