"""Every checkpoint format and wrapper, and every bad input, through the loader and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mliscan import checkpoints
from mliscan.errors import (
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
)
from tests.conftest import plain_mlp_state, run_cli

STATE = plain_mlp_state(0)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_with_metadata(tmp_path: Path) -> None:
    checkpoints.save_checkpoint(tmp_path / "m.safetensors", STATE, {"arch": "mlp", "b": [1, 2]})
    ck = checkpoints.load_checkpoint(tmp_path / "m.safetensors")
    assert _same(ck.tensors, STATE)
    assert ck.metadata == {"arch": "mlp", "b": [1, 2]}


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_torch_files(tmp_path: Path, suffix: str) -> None:
    torch.save(STATE, tmp_path / f"m{suffix}")
    assert _same(checkpoints.load_checkpoint(tmp_path / f"m{suffix}").tensors, STATE)


@pytest.mark.parametrize("key", ["state_dict", "model", "ema", "model_state_dict"])
def test_wrappers(tmp_path: Path, key: str) -> None:
    torch.save({key: STATE, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "w.pt")
    ck = checkpoints.load_checkpoint(tmp_path / "w.pt")
    assert _same(ck.tensors, STATE)
    assert any(key in n for n in ck.notes)


@pytest.mark.parametrize("prefixes", ["module.", "_orig_mod.", "module._orig_mod."])
def test_prefixes_stripped(tmp_path: Path, prefixes: str) -> None:
    torch.save({"state_dict": {prefixes + k: v for k, v in STATE.items()}}, tmp_path / "p.pt")
    assert _same(checkpoints.load_checkpoint(tmp_path / "p.pt").tensors, STATE)


def test_directory_and_sharded(tmp_path: Path) -> None:
    single = tmp_path / "single"
    single.mkdir()
    save_file(STATE, str(single / "model.safetensors"))
    assert _same(checkpoints.load_checkpoint(single).tensors, STATE)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(STATE)
    parts = {
        "model-00001-of-00002.safetensors": keys[:2],
        "model-00002-of-00002.safetensors": keys[2:],
    }
    weight_map = {}
    for name, ks in parts.items():
        save_file({k: STATE[k] for k in ks}, str(sharded / name))
        weight_map.update({k: name for k in ks})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert _same(checkpoints.load_checkpoint(sharded).tensors, STATE)

    bins = tmp_path / "bin"
    bins.mkdir()
    torch.save(STATE, bins / "pytorch_model.bin")
    assert _same(checkpoints.load_checkpoint(bins).tensors, STATE)


def test_missing_shard_and_escaping_shard(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "gone.safetensors"}})
    )
    with pytest.raises(CheckpointNotFoundError, match=r"gone\.safetensors"):
        checkpoints.load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../etc/passwd"}})
    )
    with pytest.raises(CheckpointFormatError, match="outside"):
        checkpoints.load_checkpoint(tmp_path)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_arbitrary_object_is_refused(tmp_path: Path, capsys) -> None:
    torch.save({"state_dict": STATE, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="needs the global print"):
        checkpoints.load_checkpoint(tmp_path / "evil.pt")
    assert "this must never run" not in capsys.readouterr().out


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        checkpoints.load_checkpoint(tmp_path / "nope.safetensors")
    checkpoints.save_checkpoint(tmp_path / "ok.safetensors", STATE, {})
    raw = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        checkpoints.load_checkpoint(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x07" * 100)
    with pytest.raises(CheckpointFormatError):
        checkpoints.load_checkpoint(tmp_path / "junk.safetensors")
    torch.save(STATE, tmp_path / "t.pt")
    raw = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointFormatError):
        checkpoints.load_checkpoint(tmp_path / "trunc.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointFormatError, match="no state dict"):
        checkpoints.load_checkpoint(tmp_path / "list.pt")


def test_pairing_lists_every_problem(tmp_path: Path) -> None:
    a = checkpoints.Checkpoint(Path("init.safetensors"), dict(STATE))
    b_t = {k: v for k, v in STATE.items() if k != "2.bias"}
    b_t["extra.weight"] = torch.zeros(1)
    b_t["0.weight"] = torch.zeros(16, 65)
    b = checkpoints.Checkpoint(Path("final.safetensors"), b_t)
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoints.check_pair(a, b)
    msg = str(info.value)
    assert "init.safetensors has 1 keys final.safetensors lacks: 2.bias" in msg
    assert "extra.weight" in msg
    assert "0.weight (16, 64)/float32 vs (16, 65)/float32" in msg
    assert "\n" not in msg


def test_non_finite_named(tmp_path: Path) -> None:
    bad = dict(STATE)
    bad["2.weight"] = bad["2.weight"].clone()
    bad["2.weight"][0, 0] = float("nan")
    ck = checkpoints.Checkpoint(Path("f.safetensors"), bad)
    with pytest.raises(NonFiniteWeightsError, match=r"2\.weight"):
        checkpoints.check_finite(ck)


def test_atomic_save_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "x.safetensors"
    with pytest.raises(AttributeError):
        checkpoints.save_checkpoint(target, {"a": "not a tensor"}, {})
    assert list(tmp_path.iterdir()) == []


# ---- the same through the CLI: exit code 2 and one line, never a traceback ----------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, Path, list[str]]]:
    good0, good1 = tmp / "i.safetensors", tmp / "f.safetensors"
    save_file(STATE, str(good0))
    save_file(plain_mlp_state(1), str(good1))
    raw = good1.read_bytes()
    (tmp / "trunc.safetensors").write_bytes(raw[:-10])
    (tmp / "corrupt.safetensors").write_bytes(b"\xff" * 64)
    save_file({k: v for k, v in STATE.items() if k != "2.bias"}, str(tmp / "fewer.safetensors"))
    save_file(plain_mlp_state(1, hidden=17), str(tmp / "wider.safetensors"))
    torch.save({"state_dict": STATE, "x": Payload()}, tmp / "evil.pt")
    nan = dict(STATE)
    nan["0.bias"] = torch.full_like(nan["0.bias"], float("nan"))
    save_file(nan, str(tmp / "nan.safetensors"))
    arch = ["--arch", "mlp"]
    return {
        "missing file": (tmp / "missing.safetensors", good1, arch),
        "truncated": (good0, tmp / "trunc.safetensors", arch),
        "corrupt": (good0, tmp / "corrupt.safetensors", arch),
        "key mismatch": (good0, tmp / "fewer.safetensors", arch),
        "shape mismatch": (good0, tmp / "wider.safetensors", arch),
        "pickle": (good0, tmp / "evil.pt", arch),
        "nan": (good0, tmp / "nan.safetensors", arch),
        "no arch": (good0, good1, []),
        "unknown arch": (good0, good1, ["--arch", "nonesuch"]),
        "wrong arch": (good0, good1, ["--arch", "resnet20"]),
        "bad option": (good0, good1, ["--arch", "mlp", "--activation", "swish"]),
        "missing data": (
            good0,
            good1,
            ["--arch", "mlp", "--data", "mnist", "--data-dir", str(tmp)],
        ),
    }


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    for name, (a, b, extra) in _bad_inputs(tmp_path).items():
        code, out, err = run_cli(["compare", a, b, "--alphas", "3", "-q", *extra], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (name, err)
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith("mliscan: "), (name, err)
        assert "Traceback" not in err
    assert "never run" not in out


def _sharded_bin_with_a_global(tmp_path):
    import fractions
    import json

    shard = "pytorch_model-00001-of-00001.bin"
    state = {"state_dict": {"w": torch.ones(2)}, "ratio": fractions.Fraction(1, 2)}
    torch.save(state, tmp_path / shard)
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    return index


def test_trust_pickle_is_honoured_for_sharded_torch_files(tmp_path) -> None:
    """A shard whose pickle names a foreign global is refused by default and loaded with
    --trust-pickle, exactly as a single file is."""
    import warnings

    from mliscan.checkpoints import load_checkpoint
    from mliscan.errors import UnsafeCheckpointError

    index = _sharded_bin_with_a_global(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=r"fractions\.Fraction"):
        load_checkpoint(index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = load_checkpoint(index, trust_pickle=True)
    assert torch.equal(ckpt.tensors["w"], torch.ones(2))
