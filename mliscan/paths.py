"""Path conventions and atomic writes, in one place.

Nothing is written in place: every output goes to a temporary sibling first and is renamed
over the target, so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


def _new_sibling(target: Path) -> Path:
    """A new, empty temporary file beside ``target``, created with the explicit mode 0666
    so that the kernel applies the user's umask (0644 under umask 022), exactly as a plain
    ``open`` would; the process umask is never read or changed."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")  # pragma: no cover


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it over ``path`` if the block succeeds.

    The result has the mode a plain ``open`` would give it (the user's umask), so colleagues
    on shared storage and later CI steps running as another user can read it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


# JSON that mliscan reads (run.json, trainer_state.json, config.json, shard indices, stored
# results) is at most this large and this deeply nested: mliscan's own records nest 4 levels,
# a Hub config.json rarely 6. Beyond it the file is refused as invalid JSON, before a
# RecursionError or an out-of-memory can end the process.
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64


class JSONLimitError(json.JSONDecodeError):
    """A JSON document beyond those bounds (caught wherever malformed JSON is)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, "", 0)
        self.args = (msg,)


def parse_json(text: str | bytes, limit: int = MAX_JSON_BYTES) -> Any:
    """``json.loads`` bounded in size and nesting: a document beyond either raises
    :class:`JSONLimitError`, a ``json.JSONDecodeError`` (a ValueError) as malformed JSON."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if len(text) > limit:
        raise JSONLimitError(f"longer than {limit} characters")
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONLimitError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    if deeper_than(value, MAX_JSON_DEPTH):
        raise JSONLimitError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and dicts in ``value`` nest more than ``limit`` levels (iteratively)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def read_json(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file, read literally by its name and bounded (:func:`parse_json`): raises
    OSError, UnicodeDecodeError or json.JSONDecodeError (both ValueErrors)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise JSONLimitError(f"larger than {limit} bytes")
    return parse_json(data, limit)


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


# ---- environment variables: one table, each checked when a command starts --------------


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise ValueError
    return value


def _finite_seconds(text: str) -> float:
    value = _seconds(text)
    if value == float("inf"):
        raise ValueError
    return value


def _bytes(text: str) -> int:
    value = float(text)
    if not 0 <= value < 2**63:
        raise ValueError
    return int(value)


def _whole(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if value < minimum:
            raise ValueError
        return value

    return parse


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError
    return path


@dataclass(frozen=True)
class EnvVar:
    """An environment variable mliscan reads: its parser and what it accepts."""

    name: str
    accepts: str
    parse: Callable[[str], Any]


ENVIRONMENT = {
    v.name: v
    for v in (
        EnvVar("MLISCAN_CACHE", "a folder (mliscan's cache)", _folder),
        EnvVar("MLISCAN_LOCK_TIMEOUT", "seconds to wait for a result store's lock, >= 0", _seconds),
        EnvVar(
            "MLISCAN_PROGRESS_INTERVAL",
            "seconds between progress lines in logs, a finite number >= 0",
            _finite_seconds,
        ),
        EnvVar("MLISCAN_DATA_MEMORY", "bytes of decoded data kept in memory, >= 0", _bytes),
        EnvVar("MLISCAN_PAUSE_AFTER", "a whole number >= 1 (a test hook)", _whole(1)),
        EnvVar("MLISCAN_DEBUG", "0 or empty (off), anything else (tracebacks)", str),
        EnvVar("WORLD_SIZE", "a whole number >= 1 (set by torchrun)", _whole(1)),
        EnvVar("LOCAL_RANK", "a whole number >= 0 (set by torchrun)", _whole(0)),
        # read by --shard slurm (a task of a SLURM job array)
        EnvVar("SLURM_ARRAY_TASK_ID", "a whole number >= 0 (set by SLURM)", _whole(0)),
        EnvVar("SLURM_ARRAY_TASK_COUNT", "a whole number >= 1 (set by SLURM)", _whole(1)),
        EnvVar("SLURM_ARRAY_TASK_MIN", "a whole number >= 0 (set by SLURM)", _whole(0)),
        EnvVar("SLURM_ARRAY_TASK_STEP", "a whole number >= 1 (set by SLURM)", _whole(1)),
    )
}


def env_value(name: str, default: Any = None) -> Any:
    """The parsed value of the environment variable ``name`` (``default`` when unset or
    empty); a value it does not accept is a UsageError saying what it accepts."""
    var = ENVIRONMENT[name]
    text = os.environ.get(name, "")
    if not text.strip():
        return default
    try:
        return var.parse(text)
    except (ValueError, OverflowError):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise UsageError(f"{name}={shown!r}: expects {var.accepts}") from None


def check_environment() -> None:
    """Every variable of ``ENVIRONMENT`` checked at once, before any work starts."""
    for name in ENVIRONMENT:
        env_value(name)


def mliscan_cache_dir() -> Path:
    """mliscan's own cache (fresh initialisations, streamed datasets): ``$MLISCAN_CACHE``,
    else ``$XDG_CACHE_HOME/mliscan`` or ``~/.cache/mliscan``."""
    cache = env_value("MLISCAN_CACHE")
    if cache is not None:
        return cache
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
    target = env_value(PAUSE_ENV)
    if target is None:
        return
    _stored += 1
    if _stored == target:
        import time

        Path(folder, PAUSE_FILE).write_text(str(os.getpid()))
        time.sleep(120)
