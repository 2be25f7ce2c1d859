"""User code cannot end the process silently (issue 23, item 2).

A ``--model`` module that exits, interrupts itself or raises while it is imported, while its
factory runs or in its forward ends the run with exit 2 and one line naming it; a gate never
passes on a run that did not finish. A real Ctrl-C (a signal) during the user's code is
still an interruption (exit 130).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from mliscan.checkpoints import save_checkpoint
from mliscan.cli.app import main

_names = itertools.count()

NET = (
    "torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU(), "
    "torch.nn.Linear(8, 10))"
)


def _module(
    folder: Path, *, at_import: str = "", in_factory: str = "", in_forward: str = ""
) -> str:
    """A --model module doing ``at_import`` when imported, ``in_factory`` in its factory and
    ``in_forward`` in its model's forward (a fresh module name each time)."""
    name = f"usercode_{next(_names)}"
    (folder / f"{name}.py").write_text(
        "import os, signal, sys, time\n"
        "import torch\n"
        "CALLS = []\n"
        "class Stop(BaseException):\n"
        "    pass\n"
        f"{at_import or 'pass'}\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"        self.net = {NET}\n"
        "    def forward(self, x):\n"
        f"        {in_forward or 'pass'}\n"
        "        return self.net(x)\n"
        "def make():\n"
        f"    {in_factory or 'pass'}\n"
        "    return Net()\n"
    )
    return f"{name}:make"


@pytest.fixture
def pair(tmp_path: Path, monkeypatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    out = []
    for seed, name in ((0, "i.safetensors"), (1, "f.safetensors")):
        torch.manual_seed(seed)
        net = eval(NET)
        state = {f"net.{k}": v for k, v in net.state_dict().items()}
        save_checkpoint(tmp_path / name, state, {})
        out.append(str(tmp_path / name))
    return out


GATE = ["--require-monotonic", "--max-delta", "0", "--data-limit", "20", "--alphas", "3", "-q"]


@pytest.mark.parametrize(
    ("where", "code", "said"),
    [
        ("at_import", "sys.exit(0)", "called sys.exit(0)"),
        ("in_factory", "sys.exit(0)", "called sys.exit(0)"),
        ("in_forward", "sys.exit(0)", "called sys.exit(0)"),
        ("in_factory", "sys.exit('bye')", "called sys.exit('bye')"),
        ("at_import", "raise KeyboardInterrupt", "raised KeyboardInterrupt itself"),
        ("in_factory", "raise KeyboardInterrupt", "raised KeyboardInterrupt itself"),
        ("in_forward", "raise KeyboardInterrupt", "raised KeyboardInterrupt itself"),
        ("in_factory", "raise Stop('custom')", "raised Stop: custom"),
        # past the first probe of the forward (which reports a bad-data error of its own)
        (
            "in_forward",
            "CALLS.append(1); assert len(CALLS) < 3, 'broken'",
            "AssertionError: broken",
        ),
        ("in_forward", "raise GeneratorExit", "raised GeneratorExit"),
    ],
)
def test_user_code_that_ends_the_run_is_exit_2_naming_it(
    tmp_path: Path, pair: list[str], capsys, where: str, code: str, said: str
) -> None:
    factory = _module(tmp_path, **{where: code})
    exit_code = main(["check", *pair, "--model", factory, *GATE])
    err = capsys.readouterr().err
    assert exit_code == 2, err  # never the gate's 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("mliscan: "), err
    assert said in lines[0] and "Traceback" not in err
    module = factory.split(":")[0]
    assert f"{module}.py:" in lines[0]  # the line of the user's code that did it


def test_a_real_ctrl_c_in_user_code_still_interrupts(
    tmp_path: Path, pair: list[str], capsys
) -> None:
    # the signal arrives while the user's forward runs: mliscan's handler turns it into a
    # KeyboardInterrupt there, and it is an interruption (130), not the user's error
    factory = _module(tmp_path, in_forward="os.kill(os.getpid(), signal.SIGINT); time.sleep(5)")
    exit_code = main(["check", *pair, "--model", factory, *GATE])
    err = capsys.readouterr().err
    assert exit_code == 130, err
    assert "interrupted" in err and "your code" not in err


def test_a_finished_run_of_a_healthy_model_still_gates(
    tmp_path: Path, pair: list[str], capsys
) -> None:
    factory = _module(tmp_path)
    exit_code = main(["check", *pair, "--model", factory, "--max-delta", "100", *GATE[3:]])
    assert exit_code == 0, capsys.readouterr().err
