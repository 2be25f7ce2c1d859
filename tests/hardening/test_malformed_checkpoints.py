"""Checkpoints and run folders that are wrong in type rather than in bytes: exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import run_cli


def _save(path: Path, tensors: dict, meta: dict | None = None) -> Path:
    metadata = None if meta is None else {"mliscan": json.dumps(meta)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "0.weight": torch.randn(8, 64),
        "0.bias": torch.randn(8),
        "2.weight": torch.randn(10, 8),
        "2.bias": torch.randn(10),
    }


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float8_e4m3fn])
def test_complex_and_float8_weights(tmp_path: Path, capsys, dtype) -> None:
    w = {k: v.to(dtype) for k, v in _weights().items()}
    a = _save(tmp_path / "a.safetensors", w)
    code, _, err = run_cli(["compare", a, a, "--arch", "mlp", "-q"], capsys)
    assert code == 2 and "cannot interpolate" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"arch": 5}, "field arch is int"),
        ({"arch": "mlp", "arch_options": "hidden=8"}, "field arch_options is str"),
        ({"arch": "mlp", "data": {"name": "digits", "limit": "ten"}}, "field data.limit is str"),
        ({"arch": "mlp", "data": {"name": "digits", "limit": True}}, "field data.limit is bool"),
    ],
)
def test_metadata_fields_of_the_wrong_type(tmp_path: Path, capsys, meta, needle) -> None:
    a = _save(tmp_path / "a.safetensors", _weights(), meta)
    code, _, err = run_cli(["compare", a, a, "-q"], capsys)
    assert code == 2 and needle in err and "--arch" in err


def test_config_json_fields_of_the_wrong_type(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    _save(folder / "model.safetensors", _weights())
    for config in (
        {"model_type": 7, "architectures": "GPT2LMHeadModel"},
        {"architecture": ["resnet18"], "num_classes": "many"},
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": "two"},
    ):
        (folder / "config.json").write_text(json.dumps(config))
        code, _, err = run_cli(["compare", folder, folder, "-q"], capsys)
        assert code == 2, (config, err)
        assert "Traceback" not in err and "internal error" not in err


def test_shards_that_disagree_with_their_index(tmp_path: Path, capsys) -> None:
    w = _weights()
    _save(
        tmp_path / "a.safetensors",
        {"0.weight": w["0.weight"], "0.bias": w["0.bias"], "2.bias": w["2.bias"] * 0},
    )
    _save(tmp_path / "b.safetensors", {"2.weight": w["2.weight"], "2.bias": w["2.bias"]})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(
        json.dumps(
            {
                "weight_map": {
                    "0.weight": "a.safetensors",
                    "0.bias": "a.safetensors",
                    "2.weight": "b.safetensors",
                    "2.bias": "b.safetensors",
                }
            }
        )
    )
    code, _, err = run_cli(["compare", index, index, "--arch", "mlp", "-q"], capsys)
    assert code == 2 and "disagree" in err and "2.bias" in err


def test_report_over_a_corrupt_run_json(mlp_pair: Path, tmp_path: Path, capsys) -> None:
    import shutil

    run = tmp_path / "runs" / "r"
    shutil.copytree(mlp_pair, run)
    (run / "run.json").write_text("{broken")
    code, _, err = run_cli(
        [
            "report",
            tmp_path / "runs",
            "--out",
            tmp_path / "rep",
            "-q",
            "--alphas",
            "3",
            "--no-gauss",
            "--no-figures",
        ],
        capsys,
    )
    assert code == 2 and "run.json" in err and "Traceback" not in err
