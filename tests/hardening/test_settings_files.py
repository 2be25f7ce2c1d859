"""Settings files cannot run code (issue 23, item 1).

Keys that make mliscan import or run code (``--model``, ``--model-arg``, ``--trust-pickle``:
the spec fields declared with ``code=True``) are honoured from the command line and from the
settings file of the project the user is in (at or below the repository root: the nearest
folder holding ``.git``; outside a repository, the current folder's file only). A file above
the root that sets one is refused with one line naming the file and the key, and the planted
code never runs. The settings file a command reads is always named on stderr.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch

from mliscan import spec as S
from mliscan.checkpoints import save_checkpoint
from mliscan.cli.app import main

_names = itertools.count()


def _planted(folder: Path, marker: Path) -> str:
    """A harmless 'attack': a factory that writes ``marker`` when it runs, and returns a
    working model. A fresh module name each time (imports are cached per process)."""
    name = f"planted_settings_{next(_names)}"
    (folder / f"{name}.py").write_text(
        "import pathlib, torch\n"
        "def make(width=8):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(width, 10))\n"
    )
    return f"{name}:make"


def _pair(folder: Path) -> list[str]:
    """Endpoints the planted model fits (so an honoured key runs to the end)."""
    out = []
    for seed, name in ((0, "i.safetensors"), (1, "f.safetensors")):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)
        )
        save_checkpoint(folder / name, net.state_dict(), {})
        out.append(str(folder / name))
    return out


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """outer/ (a shared parent folder), outer/repo/.git, outer/repo/sub (where the user is)."""
    outer = tmp_path / "outer"
    repo = outer / "repo"
    sub = repo / "sub"
    (repo / ".git").mkdir(parents=True)
    sub.mkdir()
    return outer, repo, sub


def test_the_code_keys_are_declared_on_the_fields() -> None:
    code = {
        f"{cls.__name__}.{f.name}"
        for cls in (S.SourceSpec, S.ArchSpec, S.DataSpec, S.EvalSpec, S.BNSpec, S.GateSpec)
        for f in dataclasses.fields(cls)
        if (o := S.option_of(f)) is not None and o.code
    }
    assert code == {"SourceSpec.trust_pickle", "ArchSpec.model", "ArchSpec.model_arg"}


@pytest.mark.parametrize(
    ("fname", "table", "key"),
    [
        ("mliscan.toml", "[check]", "model"),
        ("pyproject.toml", "[tool.mliscan.check]", "model"),
        ("mliscan.toml", "[check]", "model-arg"),
        ("pyproject.toml", "[tool.mliscan.check]", "trust-pickle"),
    ],
)
def test_a_code_key_above_the_repository_is_refused_and_nothing_runs(
    tmp_path: Path, monkeypatch, capsys, fname: str, table: str, key: str
) -> None:
    outer, _repo, sub = _layout(tmp_path)
    marker = tmp_path / "marker"
    factory = _planted(sub, marker)
    value = {
        "model": f'"{factory}"',
        "model-arg": '["width=8"]',
        "trust-pickle": "true",
    }[key]
    extra = f'model = "{factory}"\n' if key == "model-arg" else ""
    (outer / fname).write_text(f"{table}\n{extra}{key} = {value}\nmax-delta = 1\n")
    monkeypatch.chdir(sub)
    code, err = _run(["check", *_pair(sub), "-q"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(outer / fname) in lines[0] and key in lines[0] and "above the project" in lines[0]
    assert not marker.exists()


def test_a_code_key_in_the_project_is_honoured_and_named(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    outer, repo, sub = _layout(tmp_path)
    marker = tmp_path / "marker"
    factory = _planted(sub, marker)
    # the file above holds harmless settings only: the project's own file is the nearer one
    (outer / "mliscan.toml").write_text("[check]\nmax-delta = 0\n")
    (repo / "pyproject.toml").write_text(
        f'[tool.mliscan.check]\nmodel = "{factory}"\nmax-delta = 100\ndata-limit = 20\n'
        "alphas = 3\ngauss = false\n"
    )
    monkeypatch.chdir(sub)
    code, err = _run(["check", *_pair(sub), "-q"], capsys)
    assert code == 0, err
    assert marker.exists()  # the project's own file may name its model
    named = [line for line in err.splitlines() if line.startswith("settings from")]
    assert len(named) == 1 and str(repo / "pyproject.toml") in named[0]
    assert "model (runs code)" in named[0] and "max-delta" in named[0]


def test_harmless_keys_above_the_repository_still_apply_and_are_named(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    outer, _repo, sub = _layout(tmp_path)
    (outer / "mliscan.toml").write_text("[check]\nmax-delta = -1\n")
    monkeypatch.chdir(sub)
    code, err = _run(["check", "missing-i.safetensors", "missing-f.safetensors"], capsys)
    assert code == 2  # max-delta must be >= 0: the file's value was read and checked
    assert str(outer / "mliscan.toml") in err and "max-delta" in err


def test_a_code_key_on_the_command_line_is_honoured(tmp_path: Path, monkeypatch, capsys) -> None:
    _outer, _repo, sub = _layout(tmp_path)
    marker = tmp_path / "marker"
    factory = _planted(sub, marker)
    monkeypatch.chdir(sub)
    argv = ["check", *_pair(sub), "--model", factory, "--max-delta", "100", "--data-limit", "20"]
    code, err = _run([*argv, "--alphas", "3", "--no-gauss", "-q"], capsys)
    assert code == 0, err
    assert marker.exists()
    assert "settings from" not in err  # no file was read


def test_outside_a_repository_only_the_current_folders_file_runs_code(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    if any((p / ".git").exists() for p in [tmp_path, *tmp_path.parents]):
        pytest.skip("the temporary folder lies inside a repository")
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    marker = tmp_path / "marker"
    factory = _planted(here, marker)
    (tmp_path / "a" / "mliscan.toml").write_text(f'[compare]\nmodel = "{factory}"\n')
    monkeypatch.chdir(here)
    code, err = _run(["compare", *_pair(here), "--data-limit", "20", "-q"], capsys)
    assert code == 2 and "above the project" in err and not marker.exists()
    (here / "mliscan.toml").write_text(
        f'[compare]\nmodel = "{factory}"\nalphas = 3\ngauss = false\n'
    )
    code, err = _run(["compare", *_pair(here), "--data-limit", "20", "-q"], capsys)
    assert code == 0, err
    assert marker.exists() and f"settings from {here / 'mliscan.toml'}" in err


def test_an_explicit_config_is_the_users_own_choice(tmp_path: Path, monkeypatch, capsys) -> None:
    outer, _repo, sub = _layout(tmp_path)
    marker = tmp_path / "marker"
    factory = _planted(sub, marker)
    (outer / "shared.toml").write_text(
        f'[check]\nmodel = "{factory}"\nmax-delta = 100\nalphas = 3\ngauss = false\n'
    )
    monkeypatch.chdir(sub)
    argv = ["check", *_pair(sub), "--config", str(outer / "shared.toml"), "--data-limit", "20"]
    code, err = _run([*argv, "-q"], capsys)
    assert code == 0, err
    assert marker.exists() and f"settings from {outer / 'shared.toml'}" in err
