"""Hostile environments: full or read-only disks, a file-size limit, no network, no GPU, a
closed stdout. Each ends as one line naming the resource and the fix, exit 2."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _pair(mlp_pair: Path) -> list[Path]:
    return [mlp_pair / "init.safetensors", mlp_pair / "final.safetensors"]


QUICK = ["--alphas", "3", "--no-gauss", "-q", "--data-limit", "50"]


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
        (errno.ENAMETOOLONG, "too long"),
        (errno.EDQUOT, "quota"),
    ],
)
def test_write_refused_by_the_os(mlp_pair: Path, tmp_path: Path, capsys, monkeypatch, code, needle):
    import mliscan.paths as paths

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(paths.os, "replace", refuse)
    target = tmp_path / "r.json"
    rc, _, err = run_cli(["compare", *_pair(mlp_pair), *QUICK, "--json", target], capsys)
    assert rc == 2, err
    assert needle in err and str(target) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not target.exists()


def test_json_into_a_folder_and_step_summary_into_a_folder(
    mlp_pair: Path, tmp_path: Path, capsys, monkeypatch
):
    rc, _, err = run_cli(["compare", *_pair(mlp_pair), *QUICK, "--json", tmp_path], capsys)
    assert rc == 2 and "is a folder" in err
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))
    rc, _, err = run_cli(
        [
            "check",
            *_pair(mlp_pair),
            "--alphas",
            "3",
            "--data-limit",
            "50",
            "-q",
            "--max-barrier",
            "10",
        ],
        capsys,
    )
    assert rc == 2 and str(tmp_path) in err and "folder" in err and "Traceback" not in err


def test_out_naming_an_existing_file(mlp_pair: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    rc, _, err = run_cli(
        [
            "grid",
            "--init",
            mlp_pair / "init.safetensors",
            "--optimum",
            mlp_pair / "final.safetensors",
            "--out",
            blocker,
            "--alphas",
            "3",
            "-q",
        ],
        capsys,
    )
    assert rc == 2 and str(blocker) in err and "Traceback" not in err


def test_file_size_limit(mlp_pair: Path, tmp_path: Path):
    """RLIMIT_FSIZE: the write fails with EFBIG (Python ignores SIGXFSZ): exit 2."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))

    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mliscan.cli.app",
            "compare",
            *map(str, _pair(mlp_pair)),
            *QUICK,
            "--json",
            str(tmp_path / "big.json"),
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    assert "larger than allowed" in p.stderr and "Traceback" not in p.stderr


def test_no_network_for_the_hub(tmp_path: Path, monkeypatch, capsys):
    """huggingface_hub's own failures: a refused connection, and offline mode with nothing
    cached."""
    import importlib

    import huggingface_hub

    # the HTTP client huggingface_hub uses (httpx, or httpx2 in newer releases)
    for name in ("httpx2", "httpx"):
        try:
            http = importlib.import_module(name)
            break
        except ImportError:
            continue
    else:
        pytest.skip("no httpx client installed")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refused(*a, **k):
        raise http.ConnectError("[Errno 111] Connection refused (simulated)")

    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refused)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    rc, _, err = run_cli(["compare", "hf:org/tiny@step0", "hf:org/tiny@main", "-q"], capsys)
    assert rc == 2 and "cannot reach the Hugging Face Hub" in err and "--offline" in err
    assert "none is cached" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr(huggingface_hub, "snapshot_download", real)
    rc, _, err = run_cli(["compare", "hf:org/tiny@step0", "hf:org/tiny", "--offline"], capsys)
    assert rc == 2 and "not in the local Hugging Face cache" in err


def test_cuda_absent(mlp_pair: Path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, _, err = run_cli(["compare", *_pair(mlp_pair), *QUICK, "--device", "cuda"], capsys)
    assert rc == 2 and "no usable CUDA GPU" in err and "--device cpu" in err
    rc, _, err = run_cli(["compare", *_pair(mlp_pair), *QUICK, "--device", "cuda:7"], capsys)
    assert rc == 2


def test_closed_stdout(mlp_pair: Path):
    """``mliscan compare ... --json - | true``: one line, exit 2, no traceback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mliscan.cli.app",
            "compare",
            *map(str, _pair(mlp_pair)),
            *QUICK,
            "--json",
            "-",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader goes away before anything is written
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "output pipe was closed" in err and "Traceback" not in err


def test_fifo_as_a_checkpoint_is_refused_at_once(tmp_path: Path, capsys):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    rc, _, err = run_cli(["compare", fifo, fifo, "-q"], capsys)
    assert rc == 2 and "not a regular file" in err
