"""Config files: a command's settings table read for the options not given on the command
line, through the same spec fields (validation, messages naming the file and key)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mliscan.cli.app import main


def _run(args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "mliscan.cli.app", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('max-delta = "abc"', "max-delta: expected a number"),
        ('require-monotonic = "false"', "require-monotonic: expected true/false"),
        ("alphas = 1", "alphas: must be at least 2"),
        ("no-such-key = 1", "unknown check setting(s) no-such-key"),
    ],
)
def test_config_values_go_through_the_same_fields(tmp_path, toml, needle):
    (tmp_path / "pyproject.toml").write_text(f"[tool.mliscan.check]\n{toml}\n")
    code, _, err = _run(["check", "i.safetensors", "f.safetensors"], cwd=tmp_path)
    assert code == 2, err
    assert needle in err and "pyproject.toml" in err


def test_config_false_means_false(tmp_path, capsys, monkeypatch):
    # require-monotonic = false leaves no threshold: the usage error says so
    (tmp_path / "pyproject.toml").write_text("[tool.mliscan.check]\nrequire-monotonic = false\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "i.safetensors", "f.safetensors"]) == 2
    assert "no threshold set" in capsys.readouterr().err


def test_command_line_wins_over_config(mlp_pair, tmp_path, monkeypatch):
    init, final = mlp_pair / "init.safetensors", mlp_pair / "final.safetensors"
    (tmp_path / "mliscan.toml").write_text("[compare]\nalphas = 3\ndata-limit = 50\n")
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(init), str(final), "--no-gauss", "--json", "a.json", "-q"]) == 0
    assert (
        main(
            [
                "compare",
                str(init),
                str(final),
                "--no-gauss",
                "--alphas",
                "4",
                "--json",
                "b.json",
                "-q",
            ]
        )
        == 0
    )
    import json

    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert len(a["alphas"]) == 3 and a["data"]["examples"] == 50
    assert len(b["alphas"]) == 4 and b["data"]["examples"] == 50


def test_mistyped_config_keys_get_a_suggestion(tmp_path):
    (tmp_path / "mliscan.toml").write_text("[check]\nmax-delat = 0.1\nrequire_monotnic = true\n")
    code, _, err = _run(["check", "i.safetensors", "f.safetensors"], cwd=tmp_path)
    assert code == 2
    assert "did you mean max-delat -> max-delta, require_monotnic -> require-monotonic?" in err


def test_train_reads_its_own_settings_table(tmp_path):
    """[tool.mliscan.train] sets train's options (the command line wins), through
    settings.own_settings."""
    import json

    (tmp_path / "pyproject.toml").write_text(
        "[tool.mliscan.train]\nlr = [0.05]\nepochs = 1\nhidden = [4]\ndata-limit = 40\n"
        "batch-size = 20\nquiet = true\n"
    )
    code, _, err = _run(["train", "--out", "r", "--epochs", "2"], cwd=tmp_path)
    assert code == 0, err
    assert "settings from" in err and "[tool.mliscan.train]: lr, hidden" in err
    config = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert config["lr"] == 0.05 and config["epochs"] == 2 and config["data"]["limit"] == 40
    assert config["arch_options"] == {"hidden": "4"}
    (tmp_path / "pyproject.toml").write_text("[tool.mliscan.train]\nepoch = 3\n")
    code, _, err = _run(["train", "--out", "r2"], cwd=tmp_path)
    assert code == 2 and "did you mean epoch -> epochs?" in err


def test_adapter_flags_are_config_keys(tmp_path):
    """The adapters' flags are keys of every command that takes an architecture (a value
    the adapter flag refuses is named by its file and key)."""
    (tmp_path / "mliscan.toml").write_text(
        "[check]\nhidden = '8'\nbn = true\ninit-scheme = 'fixup'\nrequire-monotonic = true\n"
    )
    code, _, err = _run(["check", "i.safetensors", "f.safetensors"], cwd=tmp_path)
    assert code == 2 and "[check]: hidden, bn, init-scheme, require-monotonic" in err
    assert "unknown" not in err and "i.safetensors" in err
    (tmp_path / "mliscan.toml").write_text("[check]\nactivation = 'swish'\n")
    code, _, err = _run(["check", "i.safetensors", "f.safetensors"], cwd=tmp_path)
    assert code == 2 and "mliscan.toml: activation: must be one of relu, tanh, gelu" in err
