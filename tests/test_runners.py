"""The runners (mliscan/runners): one per study, run by the command line and the Python API
alike. The CLI's numbers and the API's must be the same numbers; the API's grid resumes and
aligns like the command's; a runner tells its caller through Events and never prints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

import mliscan
from mliscan.runners.events import Events
from mliscan.runners.grid import GridStudy, run_grid
from mliscan.spec import DataSpec, EvalSpec
from tests.conftest import TrainedRun, run_cli


@pytest.fixture(scope="module")
def two_runs(trained_run: TrainedRun) -> tuple[Path, Path]:
    common = dict(
        arch_options={"hidden": "16"}, data=DataSpec("digits", limit=200), epochs=2, lr=0.1
    )
    return trained_run("runner_a", seed=0, **common), trained_run("runner_b", seed=1, **common)


def _same(a: pl.DataFrame, b: pl.DataFrame, columns: list[str]) -> None:
    assert a.height == b.height > 0
    for c in columns:
        assert a[c].to_list() == b[c].to_list(), c


class Heard(Events):
    def __init__(self) -> None:
        self.said: list[str] = []
        self.ticks: list[str | None] = []
        self.totals: list[tuple[int, str]] = []

    def say(self, text: str) -> None:
        self.said.append(text)

    @contextmanager
    def progress(self, total: int, unit: str) -> Iterator[Any]:
        self.totals.append((total, unit))
        yield lambda item=None: self.ticks.append(item)


def test_grid_api_gives_the_commands_numbers_and_resumes(two_runs, tmp_path, capsys, monkeypatch):
    a, b = two_runs
    args = ["--init", a / "init.safetensors", "--init", b / "init.safetensors"]
    args += ["--optimum", a / "final.safetensors", "--alphas", "5"]
    code, _, _ = run_cli(["grid", *map(str, args), "--out", str(tmp_path / "cli"), "-q"], capsys)
    assert code == 0
    cli_paths = pl.read_parquet(tmp_path / "cli" / "paths.parquet")
    cli_curves = pl.read_parquet(tmp_path / "cli" / "curves.parquet")
    calls: list[tuple[int, int, str]] = []
    paths, curves = mliscan.grid(
        [a / "init.safetensors", str(b / "init.safetensors")],
        [a / "final.safetensors"],
        alphas=5,
        out=tmp_path / "api",
        progress=lambda *c: calls.append(c),
    )
    numbers = ["family", "a", "b", "own_pair", "min_delta", "barrier", "distance", "monotonic"]
    _same(paths, cli_paths, numbers)
    _same(curves, cli_curves, ["alpha", "loss", "accuracy"])
    assert calls[-1] == (3, 3, "paths")
    # the same store again: every path is found, none is evaluated
    from mliscan import families

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("a stored path was evaluated again")

    monkeypatch.setattr(families.Context, "evaluate", refuse)
    again, _ = mliscan.grid(
        [a / "init.safetensors", b / "init.safetensors"],
        [a / "final.safetensors"],
        alphas=5,
        out=tmp_path / "api",
    )
    _same(again, paths, numbers)


def test_grid_api_aligns_and_takes_modules(two_runs, tmp_path):
    from safetensors.torch import load_file

    a, b = two_runs
    paths, _ = mliscan.grid(
        [],
        [a / "final.safetensors", b / "final.safetensors"],
        alphas=4,
        align="weight-matching",
        out=tmp_path / "g",
    )
    assert paths["family"].to_list() == ["optimum-optimum"]
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "g" / "paths").glob("*.json")]
    assert record["alignment"]["method"] == "weight-matching"
    assert record["alignment"]["unaligned_barrier"] is not None
    # a state dict as an endpoint: the same path as its file
    state = load_file(a / "final.safetensors")
    from_dict, _ = mliscan.grid([a / "init.safetensors"], [state], alphas=4)
    from_file, _ = mliscan.grid([a / "init.safetensors"], [a / "final.safetensors"], alphas=4)
    _same(from_dict, from_file, ["min_delta", "barrier", "distance"])
    assert from_dict["b"].to_list() == ["<optimum0>"]


def test_plane_api_gives_the_commands_numbers(two_runs, tmp_path, capsys):
    a, b = two_runs
    points = [a / "init.safetensors", a / "final.safetensors", b / "init.safetensors"]
    code, _, _ = run_cli(
        ["plane", *map(str, points), "--resolution", "3", "--out", str(tmp_path / "cli"), "-q"],
        capsys,
    )
    assert code == 0
    cli_rows = pl.read_parquet(tmp_path / "cli" / "plane.parquet")
    frame, record = mliscan.plane(*points, resolution=3)
    _same(frame, cli_rows, ["x", "y", "loss", "accuracy"])
    cli_record = json.loads((tmp_path / "cli" / "plane.json").read_text())
    assert record["anchor_loss"] == cli_record["anchor_loss"]
    assert record["key"] == cli_record["key"]
    with pytest.raises(Exception, match="range=: expects finite"):
        mliscan.plane(*points, resolution=3, range=(1, 0, 0, 1))


def test_trajectory_api_gives_the_commands_numbers(trained_run, tmp_path, capsys):
    run = trained_run(
        "runner_traj",
        arch_options={"hidden": "16"},
        data=DataSpec("digits", limit=200),
        epochs=4,
        save_every=2,
        lr=0.1,
    )
    code, _, _ = run_cli(
        ["trajectory", str(run), "--alphas", "4", "--no-gauss", "--out", str(tmp_path / "t")],
        capsys,
    )
    assert code == 0
    cli_rows = pl.read_parquet(tmp_path / "t" / "trajectory.parquet")
    rows = mliscan.trajectory(run, alphas=4, gauss=False)
    _same(rows, cli_rows, ["step", "loss", "min_delta_from_init", "barrier_to_final"])


def test_a_runner_speaks_through_events_and_never_prints(two_runs, tmp_path, capsys):
    a, _ = two_runs
    heard = Heard()
    study = GridStudy(
        out=tmp_path / "g",
        inits=(str(a / "init.safetensors"),),
        optima=(str(a / "final.safetensors"),),
        eval=EvalSpec(alphas=3, gauss=False, batch_size=1024),
    )
    outcome = run_grid(study, heard)
    assert outcome.complete and outcome.computed == 1 and len(outcome.paths) == 1
    assert heard.totals == [(1, "paths")] and len(heard.ticks) == 1
    assert heard.said and "1 paths" in heard.said[0]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_an_interrupted_runner_says_what_is_saved(two_runs, tmp_path, monkeypatch):
    from mliscan import families

    a, b = two_runs
    real = families.Context.evaluate
    seen: list[int] = []

    def stop_second(self: Any, *args: Any) -> Any:
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(families.Context, "evaluate", stop_second)
    study = GridStudy(
        out=tmp_path / "g",
        inits=(str(a / "init.safetensors"), str(b / "init.safetensors")),
        optima=(str(a / "final.safetensors"),),
        eval=EvalSpec(alphas=3, gauss=False, batch_size=1024),
    )
    with pytest.raises(KeyboardInterrupt) as info:
        run_grid(study)
    assert info.value.resume_hint == f"1 of 3 paths are saved in {tmp_path / 'g'}"


def test_every_study_option_is_an_argument_in_python() -> None:
    """Each command's options are arguments of its Python function (or CLI_ONLY's)."""
    import inspect

    from mliscan.api import CLI_ONLY
    from mliscan.cli.app import app

    functions = {
        "grid": mliscan.grid,
        "plane": mliscan.plane,
        "trajectory": mliscan.trajectory,
        "report": mliscan.report,
    }
    import dataclasses

    from typer.main import get_command

    from mliscan.shard import ShardSpec

    cluster = {f.name for f in dataclasses.fields(ShardSpec)}  # the command line's launcher
    group = get_command(app)
    compare_args = set(inspect.signature(mliscan.compare).parameters)
    for name, fn in functions.items():
        own = set(inspect.signature(fn).parameters)
        command = group.commands[name]  # type: ignore[attr-defined]
        for param in command.params:
            arg = param.name
            if arg == "help_all" or arg in cluster:
                continue
            python = {"init": "inits", "optimum": "optima", "inits": "n_inits"}.get(arg, arg)
            python = {"optima": "n_optima"}.get(arg, python) if arg == "optima" else python
            known = python in own or python in compare_args or arg in CLI_ONLY
            known = known or arg in ("runs", "a", "b", "c", "source", "revisions", "retry_failed")
            known = known or arg in ("html", "no_figures")  # rendering: Python gets the tables
            assert known, f"{name} --{arg.replace('_', '-')} has no Python argument"


def test_runner_outcomes_hold_no_tensors(two_runs, tmp_path) -> None:
    a, _ = two_runs
    study = GridStudy(
        out=tmp_path / "g",
        inits=(str(a / "init.safetensors"),),
        optima=(str(a / "final.safetensors"),),
        eval=EvalSpec(alphas=3, gauss=False, batch_size=1024),
    )
    outcome = run_grid(study)
    json.dumps(outcome.paths)  # plain values, as the store and the tables hold them
    (record,) = outcome.records  # the typed record, as the store keeps it
    assert record.a == "runner_a0/init" and record.family == "init-optimum"
    assert record.min_delta == outcome.paths[0]["min_delta"]
    stored = json.dumps(record.to_stored())
    assert not any(isinstance(v, torch.Tensor) for v in record.to_stored().values()), stored


def test_report_api_gives_the_commands_tables(trained_run, tmp_path, capsys):
    common = dict(
        arch_options={"hidden": "16"}, data=DataSpec("digits", limit=200), epochs=2, lr=0.1
    )
    for seed in (0, 1):  # the report caches each run's metrics in its folder: copies
        trained_run(
            f"runner_{'ab'[seed]}", seed=seed, copy_to=tmp_path / "runs" / f"s{seed}", **common
        )
    args = ["report", str(tmp_path / "runs"), "--alphas", "5", "--no-figures", "--out"]
    code, out, _ = run_cli([*args, str(tmp_path / "cli")], capsys)
    assert code == 0 and "Table 1 form" in out
    cli_runs = pl.read_parquet(tmp_path / "cli" / "runs.parquet")
    frame, tables = mliscan.report(tmp_path / "runs", alphas=5, out=tmp_path / "api")
    _same(frame, cli_runs, ["seed", "min_delta", "barrier", "gauss_length", "monotonic"])
    assert set(tables) >= {"table1", "table2", "powerlaw"}
    assert (tmp_path / "api" / "table1.md").read_text() == (
        tmp_path / "cli" / "table1.md"
    ).read_text()
