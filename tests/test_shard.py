"""Studies in shards (--shard K/N, --launcher local|slurm): every shard writes into one out
folder, the folder ends up as one process would have left it, a killed or failed shard
leaves the others and the store intact and is rerun alone, a preempted job is requeued by
submitit and resumes. Shards run as real processes (subprocesses, submitit's local
executor); the SLURM path is checked against submitit's own sbatch script."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mliscan.shard import (
    Shard,
    ShardSpec,
    parse_minutes,
    parse_shard,
    shard_rows,
    status_file,
    unfinished,
)
from mliscan.spec import DataSpec, SpecError
from mliscan.sweep import expand, is_complete, run_name
from mliscan.train import TrainSpec
from tests.conftest import TrainedRun, run_cli

# A 6-run sweep of tiny digits MLPs: two runs per shard of three.
SWEEP = [
    "--optimizer",
    "sgd,adam",
    "--lr",
    "0.05,0.1,0.2",
    "--hidden",
    "8",
    "--epochs",
    "2",
    "--data-limit",
    "200",
    "--batch-size",
    "50",
    "-q",
]


def _sweep_specs() -> list[TrainSpec]:
    """The runs SWEEP makes, in its order (as `mliscan train` builds them)."""
    base = TrainSpec(
        arch_options={"hidden": "8"},
        data=DataSpec(name="digits", limit=200),
        epochs=2,
        batch_size=50,
    )
    return expand(
        base,
        {
            "optimizer": ["sgd", "adam"],
            "lr": [0.05, 0.1, 0.2],
            "momentum": [0.0],
            "weight_decay": [0.0],
            "seed": [0],
        },
    )


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("MLISCAN_DEBUG", None)
    return env


def _train(out: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mliscan.cli.app", "train", "--out", str(out), *SWEEP, *args],
        env=_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def snapshot(out: Path) -> dict[str, object]:
    """What a sweep leaves: each run's weights byte for byte and its record (less its wall
    time), and the index; not the shards' own bookkeeping."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or rel.startswith(("shards/", ".")) or "/." in rel:
            continue
        if path.name == "run.json":
            record = json.loads(path.read_text())
            record.pop("wall_time_s")
            found[rel] = record
        else:
            found[rel] = path.read_bytes()
    return found


@contextlib.contextmanager
def one_thread():
    """Every process here trains on one thread (the shards' subprocesses by OMP_NUM_THREADS):
    results equal bit for bit across processes, and 2 busy cores are not oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """SWEEP trained by one process (this one)."""
    out = tmp_path_factory.mktemp("one") / "sweep"
    from mliscan.cli.app import main

    with one_thread():
        assert main(["train", "--out", str(out), *SWEEP]) == 0
    return snapshot(out)


@pytest.fixture(autouse=True)
def _one_thread_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_shard_values_are_checked_where_they_are_given(monkeypatch, capsys) -> None:
    assert parse_shard("1/3") == Shard(1, 3) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    assert [Shard(1, 3).owns(i) for i in range(6)] == [False, True, False, False, True, False]
    assert Shard(2, 3).size(7) == 2 and Shard(1, 2).within(1, 4) == (5, 8)
    for bad in ("3/3", "1/0", "a/b", "-1/3", "2"):
        with pytest.raises(SpecError, match="--shard"):
            ShardSpec(shard=bad)
    with pytest.raises(SpecError, match="give one of the two"):
        ShardSpec(shard="0/2", launcher="local")
    with pytest.raises(SpecError, match="--slurm-partition: applies to --launcher slurm"):
        ShardSpec(launcher="local", slurm_partition="gpu")
    assert parse_minutes("90") == 90 and parse_minutes("1-02:00:00") == 26 * 60
    assert parse_minutes("4:00:00") == 240 and parse_minutes("30:30") == 31
    with pytest.raises(SpecError, match="--slurm-time"):
        ShardSpec(launcher="slurm", slurm_time="soon")
    # --shard slurm: a task of a job array (task ids need not start at 0)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    assert ShardSpec(shard="slurm").resolve() == Shard(2, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(SpecError, match="SLURM_ARRAY_TASK_ID"):
        ShardSpec(shard="slurm")
    # on the command line: exit 2 and one line naming the option, before any work
    for args in (
        ["train", "--out", "x", "--shard", "3/3"],
        ["grid", "--init", "a", "--shard", "0/2", "--launcher", "slurm"],
        ["report", ".", "--launcher", "slurm", "--slurm-time", "soon"],
        ["plane", "a", "b", "c", "--shards", "0", "--launcher", "local"],
        ["trajectory", ".", "--shard", "slurm"],
    ):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert "--shard" in err or "--slurm-time" in err, err


def test_three_concurrent_shards_and_a_killed_one_leave_what_one_process_does(
    tmp_path: Path, one_process: dict[str, object], capsys
) -> None:
    out = tmp_path / "sweep"
    # shard 1 pauses once its first run is stored, and is killed there (SIGKILL: no goodbye)
    procs = [
        _train(out, "--shard", f"{k}/3", **({"MLISCAN_PAUSE_AFTER": "1"} if k == 1 else {}))
        for k in range(3)
    ]
    deadline = time.time() + 300
    while not (out / ".paused").exists():
        assert procs[1].poll() is None and time.time() < deadline, procs[1].stderr.read()
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].communicate()
    _finish(procs[0])
    _finish(procs[2])
    # the others finished; the store holds every finished run; `runs` shows the dead shard
    status = {r["shard"]: r for r in shard_rows(out)}
    assert [status[f"{k}/3"]["status"] for k in range(3)] == ["complete", "died", "complete"]
    assert status["1/3"]["done"] == "1/2"
    names = [run_name(s) for s in _sweep_specs()]
    assert [is_complete(out / n) for n in names] == [True, True, True, True, False, True]
    assert not (out / "paths.parquet").exists()
    code, table, _ = run_cli(["runs", out], capsys)
    assert code == 0 and "died" in table and "pending" in table
    # the killed shard alone, rerun: the sweep is the one process's, byte for byte
    with one_thread():
        code, _, err = run_cli(["train", "--out", out, *SWEEP, "--shard", "1/3"], capsys)
    assert code == 0, err
    assert snapshot(out) == one_process
    assert all(r["status"] == "complete" for r in shard_rows(out))


def test_local_launcher_contains_a_failure_resubmits_it_and_a_preempted_job_resumes(
    tmp_path: Path, one_process: dict[str, object], capsys
) -> None:
    out = tmp_path / "sweep"
    blocked = out / run_name(_sweep_specs()[1])  # shard 1 of 2's first run (1, 3, 5)
    out.mkdir()
    blocked.write_text("a file where the run's folder goes")
    launch = ["train", "--out", out, *SWEEP, "--launcher", "local", "--shards", "2"]
    code, jobs, err = run_cli(launch, capsys)  # waits for its jobs (submitit's processes)
    assert code == 1, err
    assert "shard 0/2" in err and "complete" in err and "1 of 2 shards failed (1/2)" in err
    assert [line.split("\t")[0] for line in jobs.splitlines()] == ["0/2", "1/2"]
    status = {r["shard"]: r for r in shard_rows(out)}
    assert status["0/2"]["status"] == "complete" and status["1/2"]["status"] == "failed"
    assert blocked.name in status["1/2"]["error"] and status["1/2"]["done"] == "0/3"
    assert status["1/2"]["job"] == jobs.splitlines()[1].split("\t")[1]
    assert all(is_complete(out / run_name(s)) for s in _sweep_specs()[::2])  # shard 0's
    code, table, _ = run_cli(["runs", out], capsys)
    assert code == 0 and "failed" in table and "--retry-failed" in table

    # --retry-failed submits shard 1 alone (detached); SLURM's preemption signal reaches
    # its job after two runs: submitit calls ShardJob.checkpoint and requeues, and the job
    # resumes with the one run left
    blocked.unlink()
    os.environ["MLISCAN_PAUSE_AFTER"] = "2"  # inherited by the job: it pauses after 2 runs
    try:
        code, jobs, err = run_cli([*launch, "--retry-failed", "--detach"], capsys)
    finally:
        del os.environ["MLISCAN_PAUSE_AFTER"]
    assert code == 0, err
    assert "follow them with: mliscan runs" in err
    assert [line.split("\t")[0] for line in jobs.splitlines()] == ["1/2"]
    controller: int | None = int(jobs.split("\t")[1])  # our child (submitit's local executor)
    command = None
    try:
        deadline = time.time() + 120
        while not (out / ".paused").exists():
            assert time.time() < deadline, "the job never reached its pause point"
            time.sleep(0.05)
        command = int((out / ".paused").read_text())
        mine = [out / run_name(s) for s in _sweep_specs()[1::2]]
        assert [is_complete(d) for d in mine] == [True, True, False]
        stamps = [(d / "run.json").stat().st_mtime_ns for d in mine[:2]]
        job = int(Path(f"/proc/{command}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(job, signal.SIGUSR2)  # submitit's --signal=USR2@90 before a preemption
        while os.waitpid(controller, os.WNOHANG) == (0, 0):
            assert time.time() < deadline, "the requeued job did not finish"
            time.sleep(0.1)
        controller = None
    finally:
        for pid in (command, controller):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert [(d / "run.json").stat().st_mtime_ns for d in mine[:2]] == stamps  # not redone
    log = "".join(p.read_text() for p in (out / "shards" / "jobs").glob("*_log.*"))
    assert "this job is preempted" in log and "Requeued job" in log, log
    assert snapshot(out) == one_process
    assert all(r["status"] == "complete" for r in shard_rows(out))
    code, jobs, err = run_cli([*launch, "--retry-failed"], capsys)
    assert code == 0 and jobs == "" and "nothing to resubmit" in err


def test_grid_plane_trajectory_and_report_shards_write_one_study(
    trained_run: TrainedRun, tmp_path: Path, capsys
) -> None:
    """The shards of each study, one after another in this process: the last one writes the
    tables, byte for byte those of one process; the others leave them unwritten."""
    runs = tmp_path / "runs"
    for seed in (0, 1):  # copies: report caches its metrics beside the runs
        trained_run(
            "shard",
            copy_to=runs / f"s{seed}",
            arch_options={"hidden": "8"},
            data=DataSpec("digits", limit=200),
            epochs=2,
            batch_size=50,
            seed=seed,
            save_every=1,
        )
    with one_thread():
        _studies(runs, tmp_path, capsys)


def _studies(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs / "s0", runs / "s1"
    studies = {
        "grid": (
            ["grid", runs, "--inits", "3", "--alphas", "4"],
            ["paths.parquet", "curves.parquet"],
        ),
        "plane": (
            [
                "plane",
                a / "init.safetensors",
                a / "final.safetensors",
                b / "init.safetensors",
                "--resolution",
                "3",
            ],
            ["plane.parquet", "plane.json"],
        ),
        "trajectory": (
            ["trajectory", a, "--alphas", "4", "--no-gauss"],
            ["trajectory.parquet", "curves.parquet"],
        ),
        "report": (
            ["report", runs, "--alphas", "4", "--no-figures", "--batch-size", "64"],
            ["runs.parquet", "table1.md", "table2.csv", "powerlaw.md"],
        ),
    }
    for name, (args, files) in studies.items():
        n = 2 if name == "report" else 3  # the last shard stores the study's last unit
        whole, parts = tmp_path / f"{name}-1", tmp_path / f"{name}-n"
        for k in range(n):
            code, _, err = run_cli([*args, "--out", parts, "--shard", f"{k}/{n}", "-q"], capsys)
            assert code == 0, (name, err)
            if k < n - 1:
                assert "writes the" in err and not (parts / files[0]).exists(), (name, err)
        if name == "report":  # its metrics are cached beside the runs: drop them
            for cache in runs.rglob("mli-*.json"):
                cache.unlink()
        code, _, err = run_cli([*args, "--out", whole, "-q"], capsys)
        assert code == 0, (name, err)
        for f in files:
            assert (parts / f).read_bytes() == (whole / f).read_bytes(), (name, f)
        assert [r["status"] for r in shard_rows(parts)] == ["complete"] * n, name


def test_sbatch_script_from_submitit_and_no_slurm_here(tmp_path: Path, capsys) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    from mliscan.cli.launch import slurm_parameters

    spec = ShardSpec(
        launcher="slurm",
        slurm_partition="gpu",
        slurm_gpus_per_task=1,
        slurm_time="2:30:00",
        slurm_array_parallelism=4,
    )
    script = _make_sbatch_string(
        command="python -u -m submitit.core._submit jobs",
        folder=tmp_path / "jobs",
        map_count=12,
        **slurm_parameters(spec, "train"),
    )
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --time=150",
        "#SBATCH --array=0-11%4",
        "#SBATCH --job-name=mliscan-train",
        "#SBATCH --signal=USR2@90",  # submitit's checkpoint hook: requeued before the kill
    ):
        assert line in script.splitlines(), script
    # without a SLURM installation, --launcher slurm says so (exit 2, one line)
    code, _, err = run_cli(
        ["train", "--out", tmp_path / "s", *SWEEP, "--launcher", "slurm"], capsys
    )
    assert code == 2 and "no SLURM here" in err and len(err.strip().splitlines()) == 1


def test_each_shard_gets_the_command_as_given(tmp_path: Path, capsys, monkeypatch) -> None:
    from mliscan.cli import launch

    seen = []
    monkeypatch.setattr(
        launch,
        "submit",
        lambda spec, cmd, out, ctx, **kw: seen.append(launch.render_argv(ctx)) or 0,
    )
    (tmp_path / "r").mkdir()
    code, _, err = run_cli(
        [
            "grid",
            tmp_path / "r",
            "--inits",
            "2",
            "--no-gauss",
            "--bn-mode",
            "paper",
            "--launcher",
            "local",
            "--shards",
            "2",
            "--slurm-array-parallelism",
            "3",
            "--out",
            "g",
        ],
        capsys,
    )
    assert code == 0, err
    assert seen == [
        [
            "grid",
            "--inits",
            "2",
            "--out",
            "g",
            "--bn-mode",
            "paper",
            "--no-gauss",
            "--",
            str(tmp_path / "r"),
        ]
    ]


def test_the_readme_cluster_example_parses_and_says_where_slurm_is_missing(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import re
    import shlex

    from tests.conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text.split("### Studies larger than one machine", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [
        shlex.split(c.split("#")[0]) for c in block.replace("\\\n", " ").splitlines() if c.strip()
    ]
    assert [c[1] for c in commands] == ["train", "runs", "report"]
    assert "--launcher" in commands[0] and "slurm" in commands[0]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(commands[0][1:], capsys)  # every option checked, then: no srun here
    assert code == 2 and "no SLURM here" in err, err


def test_retry_failed_picks_the_shards_not_provably_done_or_alive(tmp_path: Path) -> None:
    import socket

    from mliscan.paths import atomic_write_json

    gone = subprocess.Popen(["true"])
    gone.wait()
    here = socket.gethostname()
    records = {
        0: {"status": "complete", "host": here, "pid": gone.pid},
        1: {"status": "running", "host": here, "pid": os.getpid()},  # alive: left alone
        2: {"status": "running", "host": here, "pid": gone.pid},  # died
        3: {"status": "failed", "host": here, "pid": gone.pid},
        4: {"status": "running", "host": "elsewhere", "pid": 1},  # cannot be told: resubmitted
        5: {"status": "requeued", "host": "elsewhere", "pid": 1},
    }
    for k, record in records.items():
        atomic_write_json(status_file(tmp_path, Shard(k, 7)), record)
    assert unfinished(tmp_path, 7) == [2, 3, 4, 5, 6]  # 6 never started
    assert [r["status"] for r in shard_rows(tmp_path)] == [
        "complete",
        "running",
        "died",
        "failed",
        "running",
        "requeued",
    ]
