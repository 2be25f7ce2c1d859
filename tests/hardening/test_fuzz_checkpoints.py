"""Fuzzing the checkpoint readers: every malformed file gives a clean MliscanError.

Never a crash, a hang or a huge allocation. Example counts are bounded so CI stays fast.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from mliscan.checkpoints import load_checkpoint, save_checkpoint
from mliscan.errors import MliscanError

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SUFFIXES = [".safetensors", ".pt", ".bin", ".ckpt", ""]


def _load_ok_or_clean_error(path: Path) -> None:
    try:
        load_checkpoint(path)
    except MliscanError as exc:
        assert "\n" not in str(exc).strip()


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    _load_ok_or_clean_error(path)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("valid")
    state = {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4), "n": torch.tensor(3)}
    save_checkpoint(d / "m.safetensors", state, {"arch": "mlp"})
    torch.save({"state_dict": state}, d / "m.pt")
    return {".safetensors": (d / "m.safetensors").read_bytes(), ".pt": (d / "m.pt").read_bytes()}


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=10_000),
    suffix=st.sampled_from([".safetensors", ".pt"]),
    flip=st.integers(min_value=-1, max_value=10_000),
)
def test_truncated_and_bitflipped(
    tmp_path: Path, valid_files: dict[str, bytes], cut: int, suffix: str, flip: int
) -> None:
    raw = bytearray(valid_files[suffix])
    if 0 <= flip < len(raw):
        raw[flip] ^= 0xFF
    path = tmp_path / f"t{suffix}"
    path.write_bytes(bytes(raw[: min(cut, len(raw))]))
    _load_ok_or_clean_error(path)


@FUZZ
@given(size=st.integers(min_value=0, max_value=2**64 - 1), body=st.binary(max_size=256))
def test_absurd_header_sizes(tmp_path: Path, size: int, body: bytes) -> None:
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", size) + body)
    with pytest.raises(MliscanError):
        load_checkpoint(path)


@FUZZ
@given(
    start=st.integers(min_value=0, max_value=64),
    length=st.integers(min_value=0, max_value=64),
    dtype=st.sampled_from(["F32", "F16", "I64", "BOOL", "XX"]),
    shape=st.lists(st.integers(0, 2**40), max_size=3),
)
def test_inconsistent_offsets_and_shapes(
    tmp_path: Path, start: int, length: int, dtype: str, shape: list[int]
) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": dtype, "shape": shape, "data_offsets": [start, start + length]},
    }
    blob = json.dumps(header).encode()
    path = tmp_path / "o.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 64)
    _load_ok_or_clean_error(path)


def test_overlapping_offsets_refused(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    blob = json.dumps(header).encode()
    path = tmp_path / "o.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 24)
    with pytest.raises(MliscanError):
        load_checkpoint(path)


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_json_bomb_in_metadata(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "bomb.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"mliscan": "[" * depth + "]" * depth})
    with pytest.raises(MliscanError, match="metadata"):
        load_checkpoint(path)


def test_zip_bomb_torch_file_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MiB that compress to ~64 KiB
    assert path.stat().st_size < 1 << 20
    with pytest.raises(MliscanError, match="zip bomb"):
        load_checkpoint(path)
