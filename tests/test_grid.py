"""Path families: unrelated inits, the init/optimum grid, resumability and torchrun sharding."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from mliscan.spec import DataSpec
from tests.conftest import TrainedRun, run_cli


@pytest.fixture(scope="module")
def three_runs(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three runs (copies: the grid reads every run the folder holds)."""
    root = tmp_path_factory.mktemp("runs")
    for seed in range(3):
        trained_run(
            "grid-run",
            copy_to=root / f"run{seed}",
            arch_options={"hidden": "16", "bn": True},
            data=DataSpec("digits", limit=300),
            optimizer="adam",
            lr=0.01,
            epochs=3,
            batch_size=50,
            seed=seed,
        )
    return root


def _rows(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    paths = pl.read_parquet(out / "paths.parquet").sort("path_id")
    curves = pl.read_parquet(out / "curves.parquet").sort(["path_id", "alpha"])
    return paths, curves


def test_three_by_three_grid_identities(three_runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "g"
    code, stdout, err = run_cli(
        [
            "grid",
            three_runs,
            "--inits",
            "3",
            "--optima",
            "3",
            "--out",
            out,
            "--alphas",
            "8",
            "-q",
            "--plot",
            tmp_path / "fig8.png",
        ],
        capsys,
    )
    assert code == 0, err
    paths, curves = _rows(out)
    counts = paths.group_by("family").len().sort("family")
    assert dict(zip(counts["family"], counts["len"], strict=True)) == {
        "init-init": 3,
        "init-optimum": 9,
        "optimum-optimum": 3,
    }
    io = paths.filter(pl.col("family") == "init-optimum")
    own = io.filter(pl.col("own_pair"))
    assert sorted(zip(own["a"], own["b"], strict=True)) == [
        (f"run{i}/init", f"run{i}/final") for i in range(3)
    ]
    assert io.filter(~pl.col("own_pair")).height == 6
    assert set(paths.filter(pl.col("family") == "init-init")["a"]) <= {"run0/init", "run1/init"}
    assert curves.height == 15 * 8
    for col in ("family", "a", "b", "own_pair", "min_delta", "monotonic", "barrier", "distance"):
        assert col in paths.columns
    assert {"alpha", "loss"} <= set(curves.columns)
    assert "init-optimum:" in stdout and "% monotonic" in stdout
    assert (tmp_path / "fig8.png").stat().st_size > 10_000
    # the own init-optimum path is the compare result of that run
    code, out_json, _ = run_cli(
        [
            "compare",
            three_runs / "run1" / "init.safetensors",
            three_runs / "run1" / "final.safetensors",
            "--alphas",
            "8",
            "--no-gauss",
            "-q",
            "--json",
            "-",
        ],
        capsys,
    )
    r = json.loads(out_json)
    row = own.filter(pl.col("a") == "run1/init").row(0, named=True)
    assert row["min_delta"] == pytest.approx(r["min_delta"], abs=1e-7)
    assert row["distance"] == pytest.approx(r["distance"])


def test_fresh_inits_beyond_the_runs(three_runs: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(
        [
            "grid",
            three_runs,
            "--inits",
            "4",
            "--optima",
            "1",
            "--out",
            tmp_path,
            "--alphas",
            "4",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    paths = pl.read_parquet(tmp_path / "paths.parquet")
    assert paths.height == 6 + 4 + 0
    assert any(a.startswith("fresh-") for a in paths["a"].to_list() + paths["b"].to_list())
    code, _, err = run_cli(
        ["grid", three_runs, "--optima", "9", "--out", tmp_path / "x", "-q"], capsys
    )
    assert code == 2 and "--optima" in err


def _grid_cmd(runs: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mliscan.cli.app",
        "grid",
        str(runs),
        "--inits",
        "3",
        "--optima",
        "3",
        "--out",
        str(out),
        "--alphas",
        "30",
        "-q",
        "--device",
        "cpu",
    ]


def _paused(out: Path, proc: subprocess.Popen, deadline: float = 120) -> None:
    """Wait until the process marks OUT/.paused (MLISCAN_PAUSE_AFTER): the signal that
    follows lands at a known point, never racing the work."""
    end = time.time() + deadline
    while time.time() < end and not (out / ".paused").exists():
        assert proc.poll() is None, "the process ended before its pause point"
        time.sleep(0.02)
    assert (out / ".paused").exists()


def test_killed_grid_resumes_to_identical_rows(three_runs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_grid_cmd(three_runs, full), check=True, env=env, capture_output=True)
    part = tmp_path / "part"
    proc = subprocess.Popen(
        _grid_cmd(three_runs, part),
        env={**env, "MLISCAN_PAUSE_AFTER": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _paused(part, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = len(list((part / "paths").glob("*.json")))
    assert saved == 3  # killed right after the third path: exactly those are kept
    assert not list((part / "paths").glob(".*.tmp"))  # no half-written file left visible
    p = subprocess.run(_grid_cmd(three_runs, part), env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "(3 already in" in p.stderr
    for a, b in zip(_rows(full), _rows(part), strict=True):
        assert a.equals(b)


def test_sigterm_saves_and_explains(three_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "t"
    proc = subprocess.Popen(
        _grid_cmd(three_runs, out),
        env={**os.environ, "MLISCAN_PAUSE_AFTER": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _paused(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "2 of 15 paths are saved" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_torchrun_two_ranks_gives_the_same_rows(three_runs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run(_grid_cmd(three_runs, single), check=True, env=env, capture_output=True)
    multi = tmp_path / "multi"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mliscan.cli.app",
        *_grid_cmd(three_runs, multi)[3:],
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 ranks" in p.stderr
    for a, b in zip(_rows(single), _rows(multi), strict=True):
        assert a.equals(b)


def test_compare_unrelated(three_runs: Path, tmp_path: Path, capsys) -> None:
    run = three_runs / "run0"
    code, out, err = run_cli(
        [
            "compare",
            run / "init.safetensors",
            run / "final.safetensors",
            "--unrelated",
            "3",
            "--alphas",
            "6",
            "--no-gauss",
            "-q",
            "--json",
            "-",
            "--plot",
            tmp_path / "u.png",
        ],
        capsys,
    )
    assert code == 0, err
    u = json.loads(out)["unrelated"]
    assert u["seeds"] == [0, 1, 2] and len(u["mean_loss"]) == 6 and len(u["std_loss"]) == 6
    assert 0 <= u["monotonic_share"] <= 1
    assert (tmp_path / "u.png").stat().st_size > 10_000


def test_two_processes_on_one_store_lose_nothing(three_runs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_grid_cmd(three_runs, ref), check=True, env=env, capture_output=True)
    shared = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            _grid_cmd(three_runs, shared),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert len(list((shared / "paths").glob("*.json"))) == 15
    for a, b in zip(_rows(ref), _rows(shared), strict=True):
        assert a.equals(b)


def test_corrupt_store_entry_is_recomputed_and_duplicates_are_one_path(
    three_runs: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "g"
    i0 = three_runs / "run0" / "init.safetensors"
    f0 = three_runs / "run0" / "final.safetensors"
    args = [
        "grid",
        "--init",
        i0,
        "--init",
        i0,
        "--optimum",
        f0,
        "--out",
        out,
        "--alphas",
        "4",
        "-q",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    paths, _ = _rows(out)
    assert paths.height == 2  # init-init (a path to itself) and init-optimum, once each
    stored = sorted((out / "paths").glob("*.json"))
    good = json.loads(stored[0].read_text())
    stored[0].write_text(stored[0].read_text()[:40])  # cut short, as by a full disk
    with pytest.warns(UserWarning, match="recomputed"):
        code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads(stored[0].read_text())["loss"] == good["loss"]


def test_explicit_files_are_labelled_by_run_and_pair_with_their_own_final(
    three_runs: Path, tmp_path: Path, capsys
) -> None:
    """The form in `grid --help`: two inits and one optimum named by file."""
    out = tmp_path / "g"
    args = ["grid", "--out", out, "--alphas", "4", "-q"]
    for run in ("run0", "run1"):
        args += ["--init", three_runs / run / "init.safetensors"]
    args += ["--optimum", three_runs / "run0" / "final.safetensors"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    paths, _ = _rows(out)
    io = paths.filter(pl.col("family") == "init-optimum").sort("a")
    assert io["a"].to_list() == ["run0/init", "run1/init"]
    assert io["b"].to_list() == ["run0/final", "run0/final"]
    assert io["own_pair"].to_list() == [True, False]


def test_sweep_runs_are_labelled_by_their_settings_not_their_hash(tmp_path: Path) -> None:
    """A grid over a sweep's run-<hash> folders names each endpoint by the run's optimizer,
    lr, seed and the settings that differ (`mliscan runs`' words), not by the hash."""
    from mliscan.families import named_by_settings

    configs = {
        "run-5065a27d36b3": {
            "optimizer": "adam",
            "lr": 0.01,
            "seed": 0,
            "arch_options": {"bn": True},
        },
        "run-0123456789ab": {
            "optimizer": "sgd",
            "lr": 0.1,
            "seed": 0,
            "arch_options": {"bn": True},
        },
        "run-aaaaaaaaaaaa": {
            "optimizer": "sgd",
            "lr": 0.1,
            "seed": 1,
            "arch_options": {"bn": False},
        },
    }
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        config = {**config, "device": "cpu", "data": {"name": "digits"}, "epochs": 5}
        (tmp_path / name / "run.json").write_text(json.dumps({"config": config}))
    (tmp_path / "seed7").mkdir()  # a folder named by hand keeps its name
    paths = [str(tmp_path / n / "init.safetensors") for n in [*configs, "seed7"]]
    labels = [f"{Path(p).parent.name}/init" for p in paths]
    assert named_by_settings(paths, labels) == [
        "adam lr 0.01 bn=on seed 0/init",
        "sgd lr 0.1 bn=on seed 0/init",
        "sgd lr 0.1 bn=off seed 1/init",
        "seed7/init",
    ]
    (tmp_path / "run-aaaaaaaaaaaa" / "run.json").write_text("{broken")
    assert named_by_settings(paths, labels)[2] == "run-aaaaaaaaaaaa/init"
