"""Bounded parsing (issue 23, item 4).

JSON (run.json, trainer_state.json, stored results, shard indices, metadata) and TOML
settings files are bounded in size and nesting; step numbers are checked against their
64-bit column; every environment variable mliscan reads is checked when a command starts.
Each failure is exit 2 with one line, never an internal error, and a sweep whose run.json
was damaged reruns that run instead of failing on every rerun.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mliscan.cli.app import main
from mliscan.paths import MAX_JSON_DEPTH, JSONLimitError, parse_json, read_json

DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP_BUT_PARSEABLE = '{"config": ' + "[" * 500 + "]" * 500 + "}"  # 500 levels: json parses it


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    got = capsys.readouterr()
    return code, got.out, got.err


def _one_line(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("mliscan:")]
    assert code == 2, err
    assert len(lines) == 1 and "internal error" not in err and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "text", [DEEP_JSON, DEEP_BUT_PARSEABLE, "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)]
)
def test_json_nesting_is_bounded(text: str) -> None:
    with pytest.raises(JSONLimitError, match="nested more than"):
        parse_json(text)
    assert isinstance(JSONLimitError("x"), json.JSONDecodeError)  # caught as malformed JSON


def test_json_size_is_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text('"' + "x" * 2000 + '"')
    with pytest.raises(JSONLimitError, match="larger than 1000 bytes"):
        read_json(big, limit=1000)
    assert read_json(big) == "x" * 2000


@pytest.mark.parametrize("bad", [DEEP_JSON, DEEP_BUT_PARSEABLE])
def test_a_damaged_run_json_is_one_line_and_a_sweep_reruns_it(
    tiny: Path, tmp_path: Path, capsys, monkeypatch, bad: str
) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    small = ["--epochs", "1", "--data-limit", "20", "--hidden", "4", "--batch-size", "10"]
    code, _, err = _run(["train", "--out", sweep, *small, "--lr", "0.1,0.2"], capsys)
    assert code == 0, err
    victim = next(sweep.glob("run-*")) / "run.json"
    victim.write_text(bad)
    code, out, err = _run(["runs", sweep], capsys)
    assert code == 0 and "complete" in out and "interrupted" in out, err  # not finished
    line = _one_line(*_run(["report", sweep, "--out", tmp_path / "rep"], capsys)[::2])
    assert "run.json" in line and "nested more than" in line
    code, _, err = _run(["train", "--out", sweep, *small, "--lr", "0.1,0.2"], capsys)
    assert code == 0, err  # the damaged run is trained again, the other reused
    assert json.loads(victim.read_text())["status"] == "complete"


def test_deep_or_huge_trainer_state_falls_back_to_the_folder_name(tmp_path: Path) -> None:
    from mliscan.sources import trainer_checkpoints

    for n, state in (
        (10, DEEP_JSON),
        (20, json.dumps({"global_step": 2**70})),
        (30, json.dumps({"global_step": True})),
        (40, json.dumps({"global_step": 41})),
    ):
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text(state)
    assert [s for s, _ in trainer_checkpoints(tmp_path)] == [10, 20, 30, 41]


def test_steps_beyond_int64_are_refused_naming_the_file(
    tiny: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(tiny / "init.safetensors", folder / "init.safetensors")
    huge = folder / f"step-{2**64}.safetensors"
    shutil.copy(tiny / "final.safetensors", huge)
    line = _one_line(*_run(["trajectory", folder, "--data-limit", "20"], capsys)[::2])
    assert huge.name in line and "64-bit" in line


def test_step_type_is_checked() -> None:
    from mliscan.errors import UsageError
    from mliscan.trajectories import Step

    with pytest.raises(UsageError, match="not a whole number"):
        Step(True, "x", "x.safetensors")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="64-bit"):
        Step(-1, "x", "x.safetensors")
    assert Step(2**63 - 1, "x", "x.safetensors").step == 2**63 - 1


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a = " + "{b=" * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
        ("[check]\nx = " + "[" * 20 + "]" * 20 + "\n", "nests more than"),
        ("[tool]\nmliscan = 5\n", "tool.mliscan must be a table"),
        ('tool = "mliscan"\n', "tool must be a table"),
        ('[tool.mliscan]\ncheck = "fast"\n', "must be a table of settings"),
        ("# " + "x" * (5 << 20) + "\n", "larger than 4 MiB"),
    ],
)
def test_hostile_settings_files_in_a_parent_folder_are_one_line(
    tmp_path: Path, capsys, monkeypatch, body: str, said: str
) -> None:
    name = "mliscan.toml" if body.startswith("[check]") else "pyproject.toml"
    (tmp_path / name).write_text(body)
    here = tmp_path / "project"
    here.mkdir()
    monkeypatch.chdir(here)
    line = _one_line(*_run(["check", "i.safetensors", "f.safetensors"], capsys)[::2])
    assert said in line and name in line and len(line) < 400


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MLISCAN_PROGRESS_INTERVAL", "abc"),
        ("MLISCAN_PROGRESS_INTERVAL", "inf"),
        ("MLISCAN_LOCK_TIMEOUT", "-1"),
        ("MLISCAN_LOCK_TIMEOUT", "nan"),
        ("MLISCAN_DATA_MEMORY", "lots"),
        ("MLISCAN_DATA_MEMORY", "1e30"),
        ("MLISCAN_PAUSE_AFTER", "0"),
        ("MLISCAN_PAUSE_AFTER", "x" * 500),
        ("WORLD_SIZE", "two"),
        ("LOCAL_RANK", "-1"),
        ("MLISCAN_CACHE", "FILE"),
    ],
)
def test_environment_variables_are_checked_at_start_up(
    tmp_path: Path, capsys, monkeypatch, var: str, value: str
) -> None:
    if value == "FILE":
        value = str(tmp_path / "a-file")
        Path(value).write_text("")
    monkeypatch.setenv(var, value)
    line = _one_line(*_run(["adapters"], capsys)[::2])
    assert var in line and "expects" in line and len(line) < 300


def test_environment_is_checked_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MLISCAN_PROGRESS_INTERVAL", "abc")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, _, err = _run(["train", "--out", out, "--epochs", "1", "--data-limit", "20"], capsys)
    assert code == 2 and "MLISCAN_PROGRESS_INTERVAL" in err
    assert not out.exists()  # refused before training, not after
