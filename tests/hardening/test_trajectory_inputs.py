"""Trajectories say what they use (issue 23, item 7 of the issue).

Steps are whole numbers (never booleans), two checkpoints with one step are an error naming
both, every entry of a folder is either a checkpoint or named as skipped, and a checkpoint
that does not match the others is named.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mliscan.cli.app import main
from mliscan.trajectories import find_steps
from tests.conftest import TrainedRun
from tests.hardening.conftest import tiny_settings

QUICK = ["--alphas", "3", "--data-limit", "20", "--no-gauss"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.fixture(scope="module")
def runs(trained_run: TrainedRun) -> tuple[Path, Path]:
    return trained_run("traj", **tiny_settings("4")), trained_run("traj", **tiny_settings("8"))


def _folder(tmp_path: Path, run: Path, names: dict[str, str]) -> Path:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for name, src in names.items():
        shutil.copy(run / src, folder / name)
    return folder


@pytest.mark.parametrize(
    ("names", "said"),
    [
        (["step-10.safetensors", "ckpt-10.safetensors"], "both step 10"),
        (["init.safetensors", "step-0.safetensors"], "both step 0"),
        (["step-1.safetensors", "final.safetensors", "final.pt"], "both checkpoint 'final'"),
    ],
)
def test_two_checkpoints_of_one_step_are_an_error_naming_both(
    runs: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch, names: list[str], said: str
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _folder(tmp_path, runs[0], dict.fromkeys(names, "final.safetensors"))
    code, _, err = _run(["trajectory", folder, *QUICK], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("mliscan:")]
    assert len(lines) == 1 and said in lines[0], err
    first, second = sorted(names)[:2] if said != "both checkpoint 'final'" else names[1:]
    assert first in lines[0] and second in lines[0]


def test_entries_that_are_not_checkpoints_are_named(
    runs: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _folder(
        tmp_path,
        runs[0],
        {"step-0.safetensors": "init.safetensors", "final.safetensors": "final.safetensors"},
    )
    (folder / "notes.txt").write_text("hello")
    (folder / "old").mkdir()
    (folder / ".hidden").write_text("")
    steps = find_steps(str(folder))
    assert [s.label for s in steps] == ["step-0", "final"]
    assert steps.skipped == ["notes.txt", "old/"]  # hidden files are not announced
    code, _, err = _run(["trajectory", folder, "--out", tmp_path / "t", *QUICK], capsys)
    assert code == 0, err
    assert "2 entries of" in err and "notes.txt, old/" in err


def test_a_run_folders_stray_checkpoints_are_named(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    (run / "checkpoints").mkdir()
    shutil.copy(run / "final.safetensors", run / "checkpoints" / "epoch-1.pt")
    shutil.copy(run / "final.safetensors", run / "best.safetensors")
    steps = find_steps(str(run))
    assert [s.label for s in steps] == ["init", "final"]
    assert steps.skipped == ["checkpoints/epoch-1.pt", "best.safetensors"]


def test_a_mismatched_checkpoint_is_named(
    runs: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _folder(
        tmp_path,
        runs[0],
        {"step-0.safetensors": "init.safetensors", "final.safetensors": "final.safetensors"},
    )
    shutil.copy(runs[1] / "final.safetensors", folder / "step-5.safetensors")  # hidden 8, not 4
    code, _, err = _run(["trajectory", folder, "--out", tmp_path / "t", *QUICK], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("mliscan:")]
    assert len(lines) == 1 and "step-5" in lines[0], err
    assert str(folder / "step-5.safetensors") in lines[0]
