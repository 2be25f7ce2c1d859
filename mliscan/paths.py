"""Path conventions and atomic writes, in one place.

Nothing is written in place: every output goes to a temporary sibling first and is renamed
over the target, so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mliscan.errors import CheckpointNotFoundError, UsageError

INIT_FILE = "init.safetensors"
FINAL_FILE = "final.safetensors"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
"""Where ``mliscan train --save-every K`` keeps the weights of epoch k, beside init and final."""


def checkpoint_name(epoch: int) -> str:
    """``checkpoints/epoch-<epoch>.safetensors``, relative to the run folder."""
    return f"{CHECKPOINTS_DIR}/epoch-{epoch}.safetensors"


def file_mode() -> int:
    """The mode a new file gets from the user's umask (0644 under umask 022), as ``open``
    would create it; temporary files start at 0600 and are set to this before the rename."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it over ``path`` if the block succeeds.

    The result has the mode a plain ``open`` would give it (the user's umask), so colleagues
    on shared storage and later CI steps running as another user can read it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


SOURCE_PREFIXES = ("hf:", "timm:", "init:")


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def check_local_source(text: str) -> None:
    """Fail fast, before any heavy import, when a plain-path source does not exist (hub,
    timm and init: sources are resolved later); a Hub-like id gets the hf: hint."""
    text = str(text).strip()
    if text.startswith(SOURCE_PREFIXES) or Path(text).expanduser().exists():
        return
    run, _, which = text.rpartition("@")
    if which in ("first", "last") and Path(run).expanduser().is_dir():
        return  # a training run folder with a selector, resolved by the source layer
    if _HUB_ID.match(text.split("@")[0]) and not text.endswith(_WEIGHT_SUFFIXES):
        raise CheckpointNotFoundError(
            f"{text}: no such file or directory; if it is a Hugging Face Hub id, write "
            f"hf:{text} (or timm:NAME for timm weights)"
        )
    raise CheckpointNotFoundError(f"{text}: no such file or directory; check the path")


def run_label(path: str | os.PathLike[str]) -> str:
    """A readable label of an endpoint file: its run folder and role (``seed0/init``), the
    file name for other files, the source itself for hf:/timm:/init: sources."""
    text = str(path)
    if text.startswith(SOURCE_PREFIXES):
        return text
    p = Path(text)
    if p.name in (INIT_FILE, FINAL_FILE) and p.parent.name:
        return f"{p.parent.name}/{p.stem}"
    return p.name or text


def unique_labels(paths: list[str]) -> list[str]:
    """``run_label`` of each endpoint, with parent folders added to the labels that collide
    until every label names one file (the same file given twice keeps one label)."""
    labels = [run_label(p) for p in paths]
    parts = [
        () if str(p).startswith(SOURCE_PREFIXES) else Path(p).resolve().with_suffix("").parts
        for p in paths
    ]
    depth = [1] * len(paths)
    for _ in range(max((len(x) for x in parts), default=0)):
        clashes = [
            i
            for i, label in enumerate(labels)
            if parts[i]
            and any(labels[j] == label and parts[j] != parts[i] for j in range(len(labels)))
        ]
        if not clashes:
            break
        for i in clashes:
            depth[i] += 1
            labels[i] = "/".join(parts[i][-depth[i] :])
    return labels


def find_runs(dirs: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding run.json, init and final) under the given folders, sorted."""

    runs: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise UsageError(f"{root}: not a folder of runs")
        for run_json in root.rglob(RUN_FILE):
            run = run_json.parent
            if (run / INIT_FILE).is_file() and (run / FINAL_FILE).is_file():
                runs.add(run)
    return sorted(runs)


def mliscan_cache_dir() -> Path:
    """mliscan's own cache (fresh initialisations, streamed datasets): ``$MLISCAN_CACHE``,
    else ``$XDG_CACHE_HOME/mliscan`` or ``~/.cache/mliscan``."""
    if os.environ.get("MLISCAN_CACHE"):
        return Path(os.environ["MLISCAN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "mliscan"


# Test hook: MLISCAN_PAUSE_AFTER=N makes the N-th result a process stores (a grid path, a
# sweep run) mark its folder with PAUSE_FILE and wait, so that a test's signal lands at a
# known point instead of racing the work.
PAUSE_ENV = "MLISCAN_PAUSE_AFTER"
PAUSE_FILE = ".paused"
_stored = 0


def pause_point(folder: str | os.PathLike[str]) -> None:
    """Count one stored result; at the N-th (``$MLISCAN_PAUSE_AFTER``) write
    ``folder/.paused`` and sleep until a signal arrives (at most two minutes)."""
    global _stored
    target = os.environ.get(PAUSE_ENV)
    if not target:
        return
    _stored += 1
    if str(_stored) == target.strip():
        import time

        Path(folder, PAUSE_FILE).write_text(str(os.getpid()))
        time.sleep(120)
