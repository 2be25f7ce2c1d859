"""Checkpoint formats: safetensors with mliscan's metadata, sharded indexes, safe shard names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mliscan import formats
from mliscan.errors import CheckpointFormatError

W = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}


def test_metadata_round_trip_is_one_sorted_key(tmp_path: Path) -> None:
    formats.save_checkpoint(tmp_path / "m.safetensors", W, {"seed": 1, "arch": "mlp"})
    tensors, meta = formats.load_safetensors(tmp_path / "m.safetensors")
    assert meta == {"arch": "mlp", "seed": 1}
    assert all(torch.equal(tensors[k], W[k]) for k in W)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert f.metadata() == {"mliscan": '{"arch": "mlp", "seed": 1}'}


def test_foreign_metadata_is_ignored_and_bad_fields_named(tmp_path: Path) -> None:
    save_file(W, str(tmp_path / "f.safetensors"), metadata={"format": "pt"})
    assert formats.load_safetensors(tmp_path / "f.safetensors")[1] == {}
    save_file(W, str(tmp_path / "g.safetensors"), metadata={"mliscan": '{"seed": "x"}'})
    with pytest.raises(CheckpointFormatError, match="field seed is str, not int"):
        formats.load_safetensors(tmp_path / "g.safetensors")


def test_a_sharded_index_and_its_reader(tmp_path: Path) -> None:
    save_file({"a": W["a"]}, str(tmp_path / "s1.safetensors"))
    save_file({"b": W["b"]}, str(tmp_path / "s2.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    tensors, _ = formats.load_sharded(index)
    assert set(tensors) == {"a", "b"}
    read = formats.safetensors_reader(index, "")
    again = read("b")
    assert torch.equal(again, W["b"]) and again.data_ptr() != tensors["b"].data_ptr()


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("model-00001.safetensors", True),
        ("sub/model.safetensors", True),
        ("../model.safetensors", False),
        ("/etc/passwd", False),
        ("a\\b", False),
        ("C:x", False),
        ("", False),
        (None, False),
    ],
)
def test_shard_names_stay_inside_their_folder(name: object, safe: bool) -> None:
    assert formats.is_safe_relative(name) is safe
