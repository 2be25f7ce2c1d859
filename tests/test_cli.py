"""The command line: outputs, exit codes, gates, and a cheap --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from tests.conftest import plain_mlp_state, run_cli, run_subprocess

REQUIRED_KEYS = {
    "alphas",
    "loss",
    "accuracy",
    "min_delta",
    "monotonic",
    "tolerance",
    "distance",
    "normalized_distance",
    "gauss_length",
    "barrier",
    "arch",
    "data",
    "bn",
    "timing",
    "mliscan_version",
}


def test_compare_json_and_plot_without_arch(mlp_pair: Path, tmp_path: Path, capsys) -> None:
    out_json, out_png = tmp_path / "r.json", tmp_path / "c.png"
    code, out, err = run_cli(
        [
            "compare",
            mlp_pair / "init.safetensors",
            mlp_pair / "final.safetensors",
            "--json",
            out_json,
            "--plot",
            out_png,
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert set(r) >= REQUIRED_KEYS
    assert r["arch"] == "mlp" and r["data"]["name"] == "digits" and r["data"]["examples"] == 400
    assert len(r["alphas"]) == len(r["loss"]) == 50
    assert r["alphas"][0] == 0.0 and r["alphas"][-1] == 1.0
    assert r["bn"] == {
        "mode": "exact",
        "batch_size": "all",
        "max_batches": None,
        "variance": "population",
    }
    assert set(r["timing"]) >= {"load", "bn", "evaluate", "gauss"}
    run = json.loads((mlp_pair / "run.json").read_text())
    assert r["loss"][-1] == pytest.approx(run["final_train_loss"], rel=1e-6)
    assert out_png.stat().st_size > 5000
    assert "min-Δ" in out and "Gauss length" in out


def test_json_to_stdout_and_gates(mlp_bn_pair: Path, capsys) -> None:
    init, final = mlp_bn_pair / "init.safetensors", mlp_bn_pair / "final.safetensors"
    code, out, err = run_cli(
        ["compare", init, final, "--json", "-", "-q", "--alphas", "10", "--no-gauss"], capsys
    )
    assert code == 0
    r = json.loads(out)
    assert r["gauss_length"] is None and r["bn"]["mode"] == "exact"
    # a threshold the path cannot meet fails the gate with exit code 1 (a negative
    # --max-delta is refused: min-Δ is never negative)
    code, _, err = run_cli(
        ["compare", init, final, "-q", "--alphas", "10", "--no-gauss", "--max-barrier", "-100"],
        capsys,
    )
    assert code == 1 and "FAIL" in err
    code, _, _ = run_cli(
        ["compare", init, final, "-q", "--alphas", "10", "--no-gauss", "--max-delta", "100"], capsys
    )
    assert code == 0


def test_fail_on_nonmonotonic(tmp_path: Path, capsys) -> None:
    """A path whose losses are known in closed form: the output layer's weights are zero, so
    the logits are its bias, which moves from 0 to (c, 0, ..., 0). Then
    L(alpha) = log(exp(alpha c) + 9) - alpha c * P(y = 0), rising from log(10): not monotonic,
    and min-Delta = L(1) - L(0)."""
    import math

    from sklearn.datasets import load_digits

    c = 5.0
    a = plain_mlp_state(0)
    a["2.weight"].zero_()
    a["2.bias"].zero_()
    b = {k: v.clone() for k, v in a.items()}
    b["2.bias"][0] = c
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    args = [
        "compare",
        tmp_path / "a.safetensors",
        tmp_path / "b.safetensors",
        "--arch",
        "mlp",
        "--alphas",
        "20",
        "--no-gauss",
        "-q",
        "--json",
        "-",
    ]
    code, out, _ = run_cli(args, capsys)
    r = json.loads(out)
    assert r["arch_options"]["hidden"] == [16]  # read off the checkpoint
    p0 = float((load_digits().target == 0).mean())
    expected = [math.log(math.exp(t * c) + 9) - t * c * p0 for t in r["alphas"]]
    assert r["loss"] == pytest.approx(expected, rel=1e-6)
    assert r["min_delta"] == pytest.approx(expected[-1] - expected[0], rel=1e-6)
    assert r["monotonic"] is False
    code, _, _ = run_cli([*args, "--fail-on-nonmonotonic"], capsys)
    assert code == 1


def test_bn_options_are_recorded(mlp_bn_pair: Path, capsys) -> None:
    init, final = mlp_bn_pair / "init.safetensors", mlp_bn_pair / "final.safetensors"
    results = {}
    for bs in ("all", "64", "7"):
        code, out, _ = run_cli(
            [
                "compare",
                init,
                final,
                "-q",
                "--json",
                "-",
                "--alphas",
                "5",
                "--no-gauss",
                "--bn-batch-size",
                bs,
            ],
            capsys,
        )
        assert code == 0
        results[bs] = json.loads(out)
    assert results["all"]["bn"]["batch_size"] == "all"
    assert results["64"]["bn"]["batch_size"] == 64
    assert results["all"]["loss"] != results["7"]["loss"]  # the choice visibly matters
    code, out, _ = run_cli(
        [
            "compare",
            init,
            final,
            "-q",
            "--json",
            "-",
            "--alphas",
            "5",
            "--no-gauss",
            "--bn-mode",
            "paper",
        ],
        capsys,
    )
    assert json.loads(out)["bn"] == {
        "mode": "paper",
        "batch_size": 256,
        "max_batches": None,
        "variance": "unbiased (running average)",
    }
    code, _, err = run_cli(["compare", init, final, "-q", "--bn-batch-size", "many"], capsys)
    assert code == 2 and "--bn-batch-size" in err
    # a warm-up subset is the first K batches of N: 'all' (one batch) has no subset
    code, _, err = run_cli(["compare", init, final, "-q", "--bn-warmup-batches", "2"], capsys)
    assert code == 2 and "--bn-batch-size" in err and len(err.strip().splitlines()) == 1


def test_hand_written_checkpoints_load_with_arch_flags(tmp_path: Path, capsys) -> None:
    import torch

    torch.save(
        {"model": {f"module.{k}": v for k, v in plain_mlp_state(0).items()}}, tmp_path / "i.pt"
    )
    torch.save(
        {"model": {f"module.{k}": v for k, v in plain_mlp_state(1).items()}}, tmp_path / "f.pt"
    )
    code, out, err = run_cli(
        [
            "compare",
            tmp_path / "i.pt",
            tmp_path / "f.pt",
            "--arch",
            "mlp",
            "--hidden",
            "16",
            "--alphas",
            "5",
            "-q",
            "--json",
            "-",
        ],
        capsys,
    )
    assert code == 0, err
    assert any("unwrapped 'model'" in n for n in json.loads(out)["notes"])
    code, _, err = run_cli(
        [
            "compare",
            tmp_path / "i.pt",
            tmp_path / "f.pt",
            "--arch",
            "mlp",
            "--hidden",
            "32",
            "--alphas",
            "5",
            "-q",
        ],
        capsys,
    )
    assert code == 2 and "shape mismatches" in err


def test_debug_variable_shows_traceback(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "MLISCAN_DEBUG": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "mliscan.cli.app", "compare", tmp_path / "x", tmp_path / "y"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode != 0 and "Traceback" in p.stderr
    p = run_subprocess(["compare", tmp_path / "x", tmp_path / "y"])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_usage_error_exit_2(capsys) -> None:
    code, _, _ = run_cli(["compare"], capsys)
    assert code == 2
    code, _, _ = run_cli(["compare", "a", "b", "--no-such-flag"], capsys)
    assert code == 2


def test_help_is_cheap() -> None:
    """--help must not import the heavy optional libraries."""
    code = (
        "import sys; from mliscan.cli.app import main; "
        "main(['--help']); main(['compare', '--help']); main(['train', '--help']); "
        "heavy = [m for m in ('matplotlib', 'timm', 'transformers', 'polars', 'sklearn', 'torch') "
        "if m in sys.modules]; print('HEAVY', heavy)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in p.stdout, p.stdout[-500:]
    assert "Examples" in p.stdout


def test_a_command_imports_only_its_own_module() -> None:
    """Commands are built when looked up: running one imports its module, not the others'
    (a short command's cold start); the root's help still lists every command."""
    code = (
        "import sys; from mliscan.cli.app import COMMANDS, main; main(['compare', '--help']); "
        "print('LOADED', sorted(n for n in COMMANDS if 'mliscan.cli.' + n in sys.modules)); "
        "main(['--help'])"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "LOADED ['compare']" in p.stdout, p.stdout[-500:] + p.stderr[-500:]
    from mliscan.cli.app import COMMANDS

    listing = p.stdout.split("LOADED", 1)[1]
    for name in COMMANDS:
        assert f"│ {name} " in listing, name


def test_adapters_lists_builtins(capsys) -> None:
    code, out, _ = run_cli(["adapters"], capsys)
    assert code == 0
    for name in ("mlp", "resnet20", "resnet56"):
        assert name in out


def test_train_command(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(
        [
            "train",
            "--out",
            tmp_path / "r",
            "--hidden",
            "8",
            "--epochs",
            "2",
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--bn",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "r" / "init.safetensors").exists() and (tmp_path / "r" / "run.json").exists()
    code, _, err = run_cli(
        ["train", "--out", tmp_path / "s", "--optimizer", "lbfgs", "-q", "--epochs", "1"], capsys
    )
    assert code == 2 and "optimizer" in err


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_working_copy_with_gauss_length(
    mlp_bn_pair: Path, capsys, dtype: str
) -> None:
    """A low-precision working copy of a safetensors pair: the float32 difference is cast for
    the second-order pass (it must match the weights), and the curve stays close to float32."""
    init, final = mlp_bn_pair / "init.safetensors", mlp_bn_pair / "final.safetensors"
    base = ["compare", init, final, "-q", "--json", "-", "--alphas", "5"]
    results = {}
    for d in ("float32", dtype):
        code, out, err = run_cli([*base, "--dtype", d], capsys)
        assert code in (0, 1), err
        results[d] = json.loads(out)
    low, f32 = results[dtype], results["float32"]
    np.testing.assert_allclose(low["loss"], f32["loss"], rtol=5e-2, atol=1e-2)
    assert low["gauss_length"] == pytest.approx(f32["gauss_length"], rel=5e-2)


def test_amp_autocasts_the_bn_and_loss_passes(mlp_bn_pair: Path, capsys) -> None:
    init, final = mlp_bn_pair / "init.safetensors", mlp_bn_pair / "final.safetensors"
    base = ["compare", init, final, "-q", "--json", "-", "--alphas", "5"]
    code, out, err = run_cli(base, capsys)
    f32 = json.loads(out)
    for amp, extra in (("bf16", []), ("fp16", ["--bn-batch-size", "64"])):
        code, out, err = run_cli([*base, "--amp", amp, *extra], capsys)
        assert code in (0, 1), err
        r = json.loads(out)
        assert r["amp"] == amp
        np.testing.assert_allclose(r["loss"], f32["loss"], rtol=5e-2, atol=1e-2)
        assert r["gauss_length"] == pytest.approx(f32["gauss_length"], rel=1e-2)
    code, _, err = run_cli([*base, "--amp", "int8"], capsys)
    assert code == 2 and "--amp" in err


def test_env_prints_what_a_bug_report_needs(capsys, monkeypatch) -> None:
    import torch

    from mliscan import __version__

    monkeypatch.setenv("MLISCAN_DEBUG", "0")
    code, out, _ = run_cli(["env"], capsys)
    assert code == 0
    assert f"mliscan {__version__}" in out and f"torch {torch.__version__}" in out
    assert "python " in out and "cuda " in out and "MLISCAN_DEBUG=0" in out
    code, out, _ = run_cli(["env", "--json"], capsys)
    info = json.loads(out)
    assert info["packages"]["torch"] == torch.__version__ and info["mliscan"] == __version__
