"""Real subprocesses stopped by signals leave only complete files, and say how to resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "mliscan.cli.app", *map(str, args)]


def _wait_cpu(pid: int, seconds: float, timeout: float = 120) -> None:
    """Wait until a process has used ``seconds`` of CPU time (robust on a loaded machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return
        if (int(fields[11]) + int(fields[12])) / tick >= seconds:
            return
        time.sleep(0.05)


def _wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not path.exists():
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_interrupted_leaves_no_final_and_reruns_cleanly(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    cmd = _cli("train", "--out", out, "--epochs", "400", "--hidden", "64", "-q")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "init.safetensors")
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert (out / "init.safetensors").exists()
    assert not (out / "final.safetensors").exists() and not (out / "run.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind
    done = subprocess.run(
        _cli("train", "--out", out, "--epochs", "2", "--hidden", "64", "-q"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and (out / "run.json").exists()


def test_compare_interrupted_writes_no_partial_json(tmp_path: Path, mlp_bn_pair: Path) -> None:
    target = tmp_path / "r.json"
    cmd = _cli(
        "compare",
        mlp_bn_pair / "init.safetensors",
        mlp_bn_pair / "final.safetensors",
        "--alphas",
        "2000",
        "--json",
        target,
        "-q",
        "--gauss-method",
        "jvp",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_cpu(proc.pid, seconds=5.0)  # well past start-up: inside the evaluation loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err, err
    assert not target.exists()
    assert not list(tmp_path.glob(".*"))


def test_interrupt_inside_string_exec_code_still_exits_130(tmp_path: Path) -> None:
    """Ctrl-C while a module import runs exec'd text (dataclass bodies) must still give 130.

    Under ``python -m`` CPython remembers such an interrupt even after we handled it and kills
    the process with SIGINT at exit (returncode -2) unless the CLI clears that memory.
    """
    probe = tmp_path / "ki_probe.py"
    probe.write_text(
        "import sys\n"
        "from mliscan.cli import app\n"
        "app.app.command('probe')(lambda: exec('raise KeyboardInterrupt'))\n"
        "sys.exit(app.main(['probe']))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-m", "ki_probe"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" in proc.stderr
