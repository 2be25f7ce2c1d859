"""Paths are paths (issue 23, item 3).

A name the user gives is read as written: ``mliscan runs 's[1]'`` reads ``s[1]``, never the
sibling ``s1`` that a glob would match; and every name shown through rich is escaped, so a
folder or a column called ``[/x]`` or ``[red]`` is printed as such instead of crashing the
renderer or restyling the output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from mliscan.cli.app import main

MARKUP = ["[/x]", "[red]r", "s[1]", "[bold]b[/bold]"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_runs_reads_the_named_folder_not_a_glob_match(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for folder, run in (("s1", "run-sibling"), ("s[1]", "run-literal")):
        (tmp_path / folder).mkdir()
        pl.DataFrame([{"run": run, "optimizer": "sgd"}]).write_parquet(
            tmp_path / folder / "runs.parquet"
        )
    code, out, err = _run(["runs", "s[1]"], capsys)
    assert code == 0, err
    assert "run-literal" in out and "run-sibling" not in out
    # a folder whose name is a glob matching nothing is not found, not another folder's table
    (tmp_path / "s2").mkdir()
    pl.DataFrame([{"run": "run-other"}]).write_parquet(tmp_path / "s2" / "runs.parquet")
    code, out, err = _run(["runs", "s[2]"], capsys)
    assert code == 2 and "run-other" not in out


@pytest.mark.parametrize("name", MARKUP)
def test_markup_in_a_column_or_folder_name_is_printed_as_written(
    tmp_path: Path, capsys, monkeypatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / name
    folder.mkdir(parents=True)
    pl.DataFrame([{"run": f"run-{name}", name: f"v{name}"}]).write_parquet(folder / "runs.parquet")
    code, out, err = _run(["runs", name], capsys)
    assert code == 0, err
    assert f"run-{name}" in out and name in out and "Traceback" not in err


@pytest.mark.parametrize("name", ["[/x]", "[red]r"])
def test_every_command_prints_a_markup_named_run_literally(
    tiny: Path, tmp_path: Path, capsys, monkeypatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / name  # '[/x]' is the folder 'x]' in the folder '['
    shutil.copytree(tiny, run)
    ends = [run / "init.safetensors", run / "final.safetensors"]
    fast = ["--alphas", "3", "--data-limit", "20"]
    code, out, err = _run(["compare", *ends, *fast, "--no-gauss"], capsys)
    assert code == 0, err
    assert f"MLI: {run.name}" in out  # the table's title names the run as written
    code, out, err = _run(["check", *ends, *fast, "--max-delta", "100"], capsys)
    assert code == 0, err
    grid_out = tmp_path / f"g{name}"
    code, out, err = _run(["grid", tmp_path / "runs", *fast, "--out", grid_out], capsys)
    assert code == 0, err
    assert str(grid_out) in err
    sweep = tmp_path / f"sweep{name}"
    small = ["--epochs", "1", "--data-limit", "20", "--hidden", "4", "--batch-size", "10"]
    code, out, err = _run(["train", "--out", sweep, *small, "--lr", "0.1,0.2"], capsys)
    assert code == 0, err
    assert name in err
    code, out, err = _run(["runs", sweep], capsys)
    assert code == 0 and name in out, err
    code, out, err = _run(["report", sweep, "--out", tmp_path / f"rep{name}"], capsys)
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err
