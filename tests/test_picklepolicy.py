"""The pickle policy: weights-only loads, training settings as inert placeholders, refusals."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import pytest
import torch

from mliscan import picklepolicy
from mliscan.errors import CheckpointFormatError, UnsafeCheckpointError

W = {"w": torch.arange(4.0)}


def test_training_settings_load_as_inert_placeholders(tmp_path: Path) -> None:
    torch.save({"state_dict": W, "args": argparse.Namespace(lr=0.1)}, tmp_path / "c.pth.tar")
    obj = picklepolicy.torch_load(tmp_path / "c.pth.tar")
    assert torch.equal(obj["state_dict"]["w"], W["w"])
    assert isinstance(obj["args"], picklepolicy.SkippedSetting)
    assert not vars(obj["args"])  # the settings are skipped, not kept


def test_too_many_foreign_globals_are_refused(tmp_path: Path, monkeypatch) -> None:
    torch.save({"state_dict": W, "args": argparse.Namespace(lr=0.1)}, tmp_path / "c.pth.tar")
    monkeypatch.setattr(picklepolicy, "MAX_SKIPPED_GLOBALS", 0)
    with pytest.raises(UnsafeCheckpointError, match=r"needs the global argparse\.Namespace"):
        picklepolicy.torch_load(tmp_path / "c.pth.tar")


def test_trust_pickle_warns_and_loads_the_object(tmp_path: Path) -> None:
    torch.save({"state_dict": W, "args": argparse.Namespace(lr=0.1)}, tmp_path / "c.pth.tar")
    with pytest.warns(UserWarning, match="weights_only=False"):
        obj = picklepolicy.torch_load(tmp_path / "c.pth.tar", trust_pickle=True)
    assert obj["args"].lr == 0.1


def test_a_zip_that_inflates_far_beyond_its_size_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (4 << 20))
    with pytest.raises(CheckpointFormatError, match="zip bomb"):
        picklepolicy.torch_load(bomb)


def test_a_truncated_torch_file_is_a_format_error(tmp_path: Path) -> None:
    torch.save(W, tmp_path / "t.pt")
    raw = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "x.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt"):
        picklepolicy.torch_load(tmp_path / "x.pt")
