"""Torch pickles with arbitrary globals are refused; --trust-pickle is the only way through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mliscan.checkpoints import load_checkpoint
from mliscan.errors import UnsafeCheckpointError
from tests.conftest import plain_mlp_state, run_cli

MARKER = "pickle payload executed"


class Payload:
    def __reduce__(self):
        return (print, (MARKER,))


class Wrapper:
    """An object a careless script pickles together with the weights."""

    def __init__(self, state: dict) -> None:
        self.state = state


@pytest.mark.parametrize("obj", ["payload", "custom-class", "nn.Module"])
def test_refused_never_executed(tmp_path: Path, capsys, obj: str) -> None:
    state = plain_mlp_state(0)
    if obj == "payload":
        content: object = {"state_dict": state, "x": Payload()}
    elif obj == "custom-class":
        content = Wrapper(state)
    else:
        net = torch.nn.Linear(2, 2)
        content = net
    torch.save(content, tmp_path / "f.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_checkpoint(tmp_path / "f.pt")
    assert MARKER not in capsys.readouterr().out


def test_trust_pickle_is_explicit_and_warns(tmp_path: Path, capsys) -> None:
    torch.save({"state_dict": plain_mlp_state(0), "x": Payload()}, tmp_path / "i.pt")
    torch.save({"state_dict": plain_mlp_state(1), "x": Payload()}, tmp_path / "f.pt")
    args = [
        "compare",
        tmp_path / "i.pt",
        tmp_path / "f.pt",
        "--arch",
        "mlp",
        "--alphas",
        "3",
        "--no-gauss",
        "-q",
        "--json",
        "-",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and "refused" in err and MARKER not in out
    with pytest.warns(UserWarning, match="weights_only=False"):
        code, out, err = run_cli([*args, "--trust-pickle"], capsys)
    assert code == 0, err
    assert MARKER in out  # the trusted pickle did run: that is what the flag means
    assert json.loads(out[out.index("{") :])["arch"] == "mlp"
