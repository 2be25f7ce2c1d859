"""At the terminal and on shared storage: progress in logs, labels, wrote lines, the sweep
index, file modes, completion."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mliscan.paths import atomic_write_text, run_label, unique_labels
from mliscan.spec import DataSpec
from mliscan.train import TrainSpec
from tests.conftest import run_cli

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def _mliscan(args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mliscan.cli.app", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_progress_is_timestamped_lines_when_stderr_is_not_a_terminal(mlp_pair: Path):
    init, final = mlp_pair / "init.safetensors", mlp_pair / "final.safetensors"
    p = _mliscan(
        ["compare", init, final, "--alphas", "5", "--no-gauss"],
        env={"MLISCAN_PROGRESS_INTERVAL": "0"},
    )
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if STAMP.match(line)]
    assert len(lines) >= 2, p.stderr
    assert lines[-1].endswith("elapsed") and "5/5 α" in lines[-1] and "loss" in lines[-1]
    assert any("ETA" in line for line in lines)
    assert "mlp_pair" in lines[0]  # the run folder names the pair, not "final.safetensors"
    quiet = _mliscan(["compare", init, final, "--alphas", "5", "--no-gauss", "--quiet"])
    assert not [line for line in quiet.stderr.splitlines() if STAMP.match(line)]


def test_wrote_lines_for_every_output(mlp_pair: Path, tmp_path: Path, capsys):
    init, final = mlp_pair / "init.safetensors", mlp_pair / "final.safetensors"
    code, _, err = run_cli(
        [
            "compare",
            init,
            final,
            "--alphas",
            "4",
            "--no-gauss",
            "-q",
            "--json",
            tmp_path / "r.json",
            "--plot",
            tmp_path / "c.png",
        ],
        capsys,
    )
    assert code == 0
    assert f"wrote {tmp_path / 'r.json'}" in err and f"wrote {tmp_path / 'c.png'}" in err


def test_labels_come_from_run_folders():
    assert run_label("runs/seed0/init.safetensors") == "seed0/init"
    assert run_label("hf:gpt2@step0") == "hf:gpt2@step0"
    assert unique_labels(
        ["a/x/init.safetensors", "b/x/init.safetensors", "y/init.safetensors"]
    ) == [
        "a/x/init",
        "b/x/init",
        "y/init",
    ]


def test_swapped_endpoints_are_warned(mlp_pair: Path, capsys, monkeypatch):
    """Before the evaluation (not after minutes of it), once; by check too."""
    from mliscan.evaluate import PathEvaluator

    run = PathEvaluator.run

    def marked(self, *args, **kwargs):
        print("EVALUATING", file=sys.stderr)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(PathEvaluator, "run", marked)
    init, final = mlp_pair / "init.safetensors", mlp_pair / "final.safetensors"
    code, _, err = run_cli(["compare", final, init, "--alphas", "3", "--no-gauss", "-q"], capsys)
    assert code == 0
    assert "warning:" in err and err.count("look swapped") == 1
    assert err.index("look swapped") < err.index("EVALUATING")
    code, _, err = run_cli(
        ["check", final, init, "--alphas", "3", "--max-delta", "1", "-q"], capsys
    )
    assert code == 0 and err.index("look swapped") < err.index("EVALUATING")
    code, _, err = run_cli(["compare", init, final, "--alphas", "3", "--no-gauss", "-q"], capsys)
    assert "look swapped" not in err


def test_a_typo_fails_before_torch_is_imported(tmp_path: Path):
    code = (
        "import sys; from mliscan.cli.app import main; "
        "rc = main(['compare', 'no-such-init.safetensors', 'f.safetensors']); "
        "print('RC', rc, 'torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "RC 2 False" in p.stdout, p.stdout + p.stderr
    assert "no-such-init.safetensors" in p.stderr


def test_files_are_written_with_the_users_umask(tmp_path: Path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_writing_a_file_never_touches_the_process_umask(tmp_path: Path, monkeypatch):
    """Library code runs inside other people's processes: the umask is applied by the
    kernel to an explicit mode, never read by toggling it (a race with other threads)."""

    def refuse(_mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", refuse)
    atomic_write_text(tmp_path / "c.txt", "x")
    assert (tmp_path / "c.txt").read_text() == "x"


def test_sweep_index_and_runs_command(tmp_path: Path, capsys):
    from mliscan.sweep import INDEX_FILE, expand, run_sweep

    base = TrainSpec(
        arch_options={"hidden": "8"}, data=DataSpec("digits", limit=100), epochs=1, batch_size=50
    )
    specs = expand(base, {"lr": [0.01, 0.1], "arch_options.bn": [False, True]})
    folders = run_sweep(specs[:3], tmp_path)
    index = (tmp_path / INDEX_FILE).read_text()
    for folder in folders:
        assert folder.name in index
    assert "| complete |" in index and "bn" in index and "lr" in index
    code, out, _ = run_cli(["runs", tmp_path], capsys)
    assert code == 0
    assert all(f.name in out for f in folders) and out.count("complete") == 3
    code, _, err = run_cli(["runs", tmp_path / "nothing"], capsys)
    assert code == 2 and "runs.parquet" in err


def test_shell_completion_through_typer():
    script = _mliscan(["--show-completion", "bash"])
    assert script.returncode == 0 and "_MLISCAN_COMPLETE" in script.stdout
    exe = Path(sys.executable).parent / "mliscan"  # completion runs the console script
    if not exe.exists():
        pytest.skip("the mliscan console script is not installed in this environment")
    env = {"COMP_WORDS": "mliscan compare a b --bn-m", "COMP_CWORD": "4"}
    p = subprocess.run(
        [str(exe)],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "_MLISCAN_COMPLETE": "complete_bash"},
    )
    assert p.stdout.split() == ["--bn-mode"]
