"""The README's install lines, run as written in throwaway virtual environments.

mliscan has no package-index entry, so the README installs it from its repository (a
``git+`` URL at a tag), from a clone (a path) or from a wheel. Each README code block whose
``pip`` lines install mliscan runs, line by line, in a fresh virtual environment (a block
whose lines all ran already is not repeated):

* the repository URL (``https://github.com/OWNER/mliscan``) points at a local git clone of
  this checkout (its tracked and untracked, not ignored, files in one commit tagged as the
  README's tag), and ``./mliscan`` is that clone;
* nothing is downloaded: the environment sees this one's packages (torch, lightning, ...)
  through a ``.pth`` file, pip runs with no index and no site configuration, and builds use
  the setuptools already installed (no isolated build environment to download into);
* after each install, mliscan is found in the new environment (not this one), with its
  ``mliscan`` command and the built-in adapters' entry points, and each extra named on the
  line is one the installed metadata provides.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

URL = "https://github.com/OWNER/mliscan"
PIP_LINE = re.compile(r"^(?:-\s+)?(?:run:\s+)?(pip (?:install|wheel) .*)$")

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(),
    reason="needs git and a git checkout",
)


def readme_install_blocks() -> list[list[str]]:
    """The ``pip install``/``pip wheel`` lines about mliscan, by README code block."""
    text = (REPO / "README.md").read_text()
    blocks = []
    for body in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        lines = []
        for raw in body.splitlines():
            match = PIP_LINE.match(raw.strip())
            if match and "mliscan" in match.group(1):
                lines.append(match.group(1).split("  #")[0].strip())
        if lines:
            blocks.append(lines)
    return blocks


def _run(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _clone(root: Path, tag: str) -> Path:
    """A git repository holding the checkout as it is now, tagged ``tag``."""
    files = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO
    ).stdout.split("\0")
    clone = root / "mliscan"
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():  # a deleted, not yet committed file is listed but absent
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "-c", "gc.auto=0"]
    _run([*git, "init", "-q"], cwd=clone)
    _run([*git, "add", "-A"], cwd=clone)
    _run([*git, "commit", "-q", "-m", "checkout"], cwd=clone)
    _run([*git, "tag", tag], cwd=clone)
    return clone


def _venv(folder: Path) -> dict[str, str]:
    """A fresh environment that sees this one's packages, and its hermetic pip settings."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)])
    python = folder / "bin" / "python"
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    (Path(site) / "_outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = folder / "bin" / "pip"  # this environment's pip, installing into the new one
    pip.write_text('#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n')
    pip.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(
        PATH=f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(folder),
        PIP_CONFIG_FILE=os.devnull,  # no site-wide index or find-links
        PIP_NO_INDEX="1",  # nothing downloaded: every dependency is already installed
        PIP_NO_BUILD_ISOLATION="false",  # pip's inverted spelling: build with setuptools here
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


CHECK = """
import importlib.metadata as md, importlib.util, sys
from pathlib import Path
spec = importlib.util.find_spec("mliscan")
assert spec.origin.startswith(sys.prefix), spec.origin  # the new environment's copy
dist = next(d for d in md.distributions(path=sys.path) if d.metadata["Name"] == "mliscan")
assert str(dist.locate_file("")).startswith(sys.prefix), dist.locate_file("")
names = {e.name for e in dist.entry_points if e.group == "mliscan.adapters"}
assert {"mlp", "resnet20", "hf-causal-lm"} <= names, names
script = Path(sys.prefix, "bin", "mliscan").read_text().splitlines()[0]
assert script == "#!" + sys.executable, script
for extra in sys.argv[1:]:
    assert extra in dist.metadata.get_all("Provides-Extra"), extra
    assert importlib.util.find_spec(f"mliscan.integrations.{extra}").origin.startswith(sys.prefix)
"""


def _check_installed(venv: Path, env: dict[str, str], line: str) -> None:
    """mliscan imported from the new environment, its command and adapters declared there,
    and the extras named on the line known to it (pip checked their requirements)."""
    extras = re.search(r"mliscan[^\[\s\"']*\[([\w,]+)\]", line)
    named = extras.group(1).split(",") if extras else []
    _run([str(venv / "bin" / "python"), "-c", CHECK, *named], env=env, cwd=venv)


def test_readme_install_lines_run_as_written(tmp_path: Path) -> None:
    blocks = readme_install_blocks()
    lines = [line for block in blocks for line in block]
    assert any("git+" in line for line in lines) and any(".whl" in line for line in lines)
    assert not any(re.search(r"pip install ['\"]?mliscan(\[[\w,]+\])?['\"]?$", x) for x in lines)
    tags = {m for line in lines for m in re.findall(re.escape(URL) + r"@([\w.]+)", line)}
    assert len(tags) == 1, tags
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)[1]
    assert tags == {f"v{version}"}  # the README's tag is the version it installs

    clone = _clone(tmp_path / "source", tags.pop())
    seen: set[str] = set()
    for i, block in enumerate(blocks):
        if set(block) <= seen:  # the same lines (a workflow's step) already ran
            continue
        seen.update(block)
        venv, work = tmp_path / f"venv{i}", tmp_path / f"work{i}"
        env = _venv(venv)
        shutil.copytree(clone, work / "mliscan", ignore=shutil.ignore_patterns(".git"))
        for line in block:
            command = line.replace(URL, clone.resolve().as_uri())
            _run(["bash", "-c", command], cwd=work, env=env)
            if line.startswith("pip install"):
                _check_installed(venv, env, line)
