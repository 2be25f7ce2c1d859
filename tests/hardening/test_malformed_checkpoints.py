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


@pytest.mark.parametrize(
    "value",
    [["a.safetensors"], 5, None, {"file": "a.safetensors"}, ""],
    ids=["list", "int", "null", "object", "empty"],
)
def test_shard_index_values_that_are_not_file_names(tmp_path: Path, capsys, value) -> None:
    _save(tmp_path / "a.safetensors", _weights())
    weight_map = dict.fromkeys(_weights(), "a.safetensors")
    weight_map["2.bias"] = value  # one odd value among file names: mixed types
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    code, _, err = run_cli(["compare", index, index, "--arch", "mlp", "-q"], capsys)
    assert code == 2, err
    assert "weight_map maps '2.bias'" in err and "not a shard file name" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args", [{"pretrained": True}, {"checkpoint_path": "/etc/passwd"}, {"no_such_arg": 3}]
)
def test_timm_config_model_args_cannot_load_weights(tmp_path: Path, capsys, args: dict) -> None:
    import timm

    folder = tmp_path / "m"
    folder.mkdir()
    net = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors")
    )
    config = {"architecture": "test_resnet", "num_classes": 7, "model_args": args}
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(["compare", folder, folder, "--data", "digits", "-q"], capsys)
    assert code == 2, err
    assert "internal error" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    if "no_such_arg" not in args:
        assert "builds the architecture only" in err and next(iter(args)) in err


def test_a_plane_whose_range_overflows_writes_null_and_warns(
    mlp_pair: Path, tmp_path: Path, capsys
) -> None:
    import polars as pl

    ends = [mlp_pair / "init.safetensors", mlp_pair / "final.safetensors"]
    third = tmp_path / "third.safetensors"
    torch.manual_seed(3)
    w = {k: v + 0.1 * torch.randn_like(v) for k, v in _load(ends[1]).items()}
    save_file(w, str(third), metadata={"mliscan": json.dumps({"arch": "mlp"})})
    out = tmp_path / "plane"
    huge = ["--range=-1e30,1e30,-1e30,1e30", "--resolution", "3", "--data-limit", "20"]
    code, _, err = run_cli(
        ["plane", *ends, third, *huge, "--out", out, "--plot", tmp_path / "p.png"], capsys
    )
    assert code == 0, err
    assert "NaN/Inf at" in err and "null" in err
    text = (out / "plane.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in plane.json"))
    rows = pl.read_parquet(out / "plane.parquet")
    assert rows["loss"].null_count() > 0


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
