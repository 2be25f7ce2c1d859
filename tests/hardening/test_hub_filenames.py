"""Hub file names can never lead outside the checkpoint folder or the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mliscan.checkpoints import is_safe_relative, load_checkpoint
from mliscan.errors import CheckpointFormatError, HubError, UsageError
from mliscan.sources import parse_hf, resolve


@pytest.mark.parametrize(
    "name",
    ["../x.safetensors", "a/../../x", "/etc/passwd", "..", "a\\..\\b", "C:evil", "", "x\x00y"],
)
def test_unsafe_names_are_refused(name: str) -> None:
    assert not is_safe_relative(name)


@pytest.mark.parametrize("name", ["model.safetensors", "sub/model-00001-of-00002.safetensors"])
def test_plain_names_pass(name: str) -> None:
    assert is_safe_relative(name)


def test_shard_index_pointing_out_of_a_snapshot_is_refused(tmp_path: Path) -> None:
    # a snapshot whose shard is a symlink into the blob store (as in the real cache) loads;
    # an index naming a path outside the folder is refused before anything is opened
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / ("a" * 40)
    blobs.mkdir()
    snap.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, blobs / "abc")
    (snap / "model-1.safetensors").symlink_to(Path("..") / ".." / "blobs" / "abc")
    (snap / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-1.safetensors"}})
    )
    assert torch.equal(load_checkpoint(snap).tensors["w"], torch.ones(2))
    (snap / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "../../blobs/abc"}})
    )
    with pytest.raises(CheckpointFormatError, match="outside"):
        load_checkpoint(snap)


@pytest.mark.parametrize(
    "source", ["hf:../../etc", "hf:org/name@../../x", "hf:org/name/extra", "hf:org", "hf:/abs/p"]
)
def test_repository_ids_and_revisions_are_validated(source: str) -> None:
    with pytest.raises(UsageError):
        parse_hf(source)


def test_unknown_repo_offline_is_a_hub_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        resolve("hf:org/absent", offline=True)
