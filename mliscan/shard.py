"""Studies split over independent processes: shard K of N does every N-th unit of work.

A unit is what a study stores one result for: a training run of a sweep, a path of a grid or
a trajectory, a point of a plane, a run's metrics in a report. Units are numbered in the
order one process would do them, and shard K of N (K counts from 0) takes units K, K + N,
K + 2N, ...: the rule torchrun ranks already follow in ``mliscan grid``, and the two compose
(shard K of N with W ranks each is rank K*W + r of N*W). Every shard writes into one out
folder through the study's store (atomic files; the merged tables under the store's lock), so
shards may run at once, die and be rerun, and the folder ends up holding one study: what one
process would have written. The merged tables are written by whichever shard stores the
study's last unit.

Each shard records its progress in ``OUT/shards/shard-K-of-N.json`` (:class:`ShardLog`),
which ``mliscan runs OUT`` reads; ``--launcher`` (``mliscan.cli.launch``) adds
``OUT/shards/launch.json`` with the job of each shard.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from mliscan.paths import atomic_write_json, env_value, read_json
from mliscan.spec import Spec, SpecError, opt

CLUSTER = "Shards and clusters"
# More shards than this is a typing error (SLURM's own MaxArraySize defaults to 1001).
MAX_SHARDS = 10_000
SHARDS_DIR = "shards"
LAUNCH_FILE = "launch.json"
# The time limit of each SLURM task when --slurm-time is not given.
DEFAULT_SLURM_TIME = "4:00:00"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
# sbatch --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` of a study (``Shard(0, 1)`` is all of it)."""

    index: int = 0
    count: int = 1

    def owns(self, unit: int) -> bool:
        """Whether unit number ``unit`` (in the study's stable order) is this shard's."""
        return unit % self.count == self.index

    def size(self, units: int) -> int:
        """How many of ``units`` units are this shard's."""
        return len(range(self.index, units, self.count))

    def within(self, rank: int, world: int) -> tuple[int, int]:
        """(rank, world) of torchrun rank ``rank`` of ``world`` inside this shard."""
        return self.index * world + rank, self.count * world

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1


WHOLE = Shard()


def parse_shard(text: str, where: str = "--shard") -> Shard:
    """``K/N`` (0 <= K < N) or ``slurm`` (this task of a SLURM job array)."""
    if text.strip().lower() == "slurm":
        return slurm_shard(where)
    m = _SHARD.match(text)
    if not m:
        raise SpecError(where, f"expects K/N (shard K of N, K from 0) or slurm, got {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise SpecError(where, f"N must be 1 to {MAX_SHARDS}, got {text!r}")
    if index >= count:
        raise SpecError(
            where, f"K counts from 0 to N-1 (the shards of 3 are 0/3, 1/3, 2/3), got {text!r}"
        )
    return Shard(index, count)


def slurm_shard(where: str = "--shard") -> Shard:
    """This task's shard of a SLURM job array: task ids MIN, MIN+STEP, ... are shards 0, 1, ..."""
    task = env_value("SLURM_ARRAY_TASK_ID")
    count = env_value("SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None:
        raise SpecError(
            where,
            "slurm reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, which are not set: run "
            "it as a task of a SLURM job array (sbatch --array=0-3), or give K/N",
        )
    low = env_value("SLURM_ARRAY_TASK_MIN", 0)
    step = env_value("SLURM_ARRAY_TASK_STEP", 1)
    index, rest = divmod(task - low, step)
    if rest or not 0 <= index < count or count > MAX_SHARDS:
        raise SpecError(
            where,
            f"SLURM_ARRAY_TASK_ID={task} is not one of the {count} tasks of the array "
            f"starting at {low} in steps of {step}",
        )
    return Shard(index, count)


def parse_minutes(text: str, where: str = "--slurm-time") -> int:
    """sbatch's --time forms (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S) as whole minutes."""
    m = _TIME.match(text.strip())
    if not m:
        raise SpecError(
            where, f"expects minutes or [D-]HH:MM:SS as sbatch --time does, got {text!r}"
        )
    g = [int(v) if v else 0 for v in m.groups()]
    if m.group(1) is not None:  # D-H[:M[:S]]
        seconds = ((g[0] * 24 + g[1]) * 60 + g[2]) * 60 + g[3]
    elif m.group(7) is not None:  # H:M:S
        seconds = (g[4] * 60 + g[5]) * 60 + g[6]
    else:  # M or M:S
        seconds = g[4] * 60 + g[5]
    if seconds < 60:
        raise SpecError(where, f"must be at least one minute, got {text!r}")
    return -(-seconds // 60)


@dataclass(frozen=True)
class ShardSpec(Spec):
    """Which part of a study this process does, or how its shards are submitted as jobs."""

    concern: ClassVar[str] = "sharding"
    shard: str | None = opt(
        None,
        "Do only every N-th unit of work from the K-th (K from 0), into the same --out as "
        "the other shards; 'slurm': the task of a SLURM job array.",
        panel=CLUSTER,
        numeric=False,
        metavar="K/N",
        show="all of it",
    )
    launcher: Literal["none", "local", "slurm"] = opt(
        "none",
        "Submit the shards through submitit (the slurm extra): slurm (one job array) or "
        "local (processes here); none: work here.",
        panel=CLUSTER,
        numeric=False,
        metavar="WHERE",
    )
    shards: int | None = opt(
        None,
        "How many shards --launcher submits.",
        panel=CLUSTER,
        rare=True,
        numeric=False,
        ge=1,
        le=MAX_SHARDS,
        metavar="N",
        show="one per run for train",
    )
    slurm_partition: str | None = opt(
        None,
        "SLURM partition of the jobs.",
        panel=CLUSTER,
        rare=True,
        numeric=False,
        metavar="NAME",
    )
    slurm_gpus_per_task: int | None = opt(
        None,
        "GPUs of each SLURM task.",
        panel=CLUSTER,
        rare=True,
        numeric=False,
        ge=0,
        le=64,
        metavar="N",
        show="none",
    )
    slurm_time: str | None = opt(
        None,
        "Time limit of each SLURM task, as sbatch --time (minutes or [D-]HH:MM:SS); a task that "
        "reaches it, or is preempted, is requeued and resumes.",
        panel=CLUSTER,
        rare=True,
        numeric=False,
        metavar="TIME",
        show=DEFAULT_SLURM_TIME,
    )
    slurm_array_parallelism: int | None = opt(
        None,
        "At most this many tasks of the job array run at once.",
        panel=CLUSTER,
        rare=True,
        numeric=False,
        ge=1,
        le=MAX_SHARDS,
        metavar="N",
        show="all",
    )
    detach: bool = opt(
        False,
        "With --launcher: print the job ids and how to follow them, and return at once.",
        panel=CLUSTER,
        rare=True,
        numeric=False,
    )
    retry_failed: bool = opt(
        False,
        "With --launcher: submit only the shards with units left (failed, killed or never "
        "started); the units they finished before are not computed again.",
        panel=CLUSTER,
        rare=True,
        numeric=False,
    )

    def check(self) -> None:
        if self.shard is not None:
            try:
                parse_shard(self.shard)
            except SpecError as exc:
                raise self.fail("shard", exc.problem) from None
            if self.launcher != "none":
                raise self.fail(
                    "shard",
                    f"runs one shard here, --launcher {self.launcher} submits all of them: "
                    "give one of the two",
                )
        if self.slurm_time is not None:
            try:
                parse_minutes(self.slurm_time)
            except SpecError as exc:
                raise self.fail("slurm_time", exc.problem) from None
        if self.launcher == "local":
            for name in ("slurm_partition", "slurm_gpus_per_task", "slurm_time"):
                if getattr(self, name) is not None:
                    raise self.fail(name, "applies to --launcher slurm, not local")

    def resolve(self) -> Shard:
        """This process's shard (all of the study without --shard)."""
        return WHOLE if self.shard is None else parse_shard(self.shard)

    def minutes(self) -> int:
        return parse_minutes(self.slurm_time or DEFAULT_SLURM_TIME)


# ---- progress records ----------------------------------------------------------------------


def status_file(out: Path, shard: Shard) -> Path:
    return Path(out) / SHARDS_DIR / f"shard-{shard.index}-of-{shard.count}.json"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class ShardLog:
    """A shard's progress in ``OUT/shards/shard-K-of-N.json``: running with its units done,
    then complete or failed (with the error's line); written atomically after every unit.
    A process killed outright leaves ``running`` with its pid and host, which ``shard_rows``
    reads as died. Nothing is written without --shard (``WHOLE``)."""

    def __init__(
        self, out: Path, shard: Shard, command: str, units: int, share: Shard | None = None
    ) -> None:
        """``share``: the units this process does when it is not all of the shard's (one
        torchrun rank of a shard)."""
        self.path = status_file(out, shard)
        self.shard = shard
        self.record: dict[str, Any] = {
            "command": command,
            "shard": shard.label,
            "status": "running",
            "units": units,
            "owned": (share or shard).size(units),
            "done": 0,
            "computed": 0,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _now(),
            "updated": _now(),
            "error": None,
        }

    def _write(self) -> None:
        if self.shard is WHOLE:  # no --shard given (--shard 0/1, as --launcher gives, is kept)
            return
        self.record["updated"] = _now()
        with contextlib.suppress(OSError):  # bookkeeping: never the reason a shard fails
            atomic_write_json(self.path, self.record)

    def found(self, units: int) -> None:
        """``units`` of this shard's units were stored before it started."""
        self.record["done"] += units
        self._write()

    def unit(self, computed: bool = True) -> None:
        """One more of this shard's units is stored (``computed`` now, or found done)."""
        self.record["done"] += 1
        self.record["computed"] += bool(computed)
        self._write()

    def __enter__(self) -> ShardLog:
        self._write()
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.record["status"] = "complete"
        elif isinstance(exc, KeyboardInterrupt):
            self.record.update(status="failed", error="interrupted")
        else:
            self.record.update(status="failed", error=first_line(exc))
        self._write()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        record = read_json(path, limit=1 << 20)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def shard_rows(out: Path) -> list[dict[str, Any]]:
    """One row per shard record under ``OUT/shards`` (by N, then K): its status (a running
    shard whose process on this host is gone is ``died``), units done of its own, and the job
    and log file ``--launcher`` recorded for it."""
    folder = Path(out) / SHARDS_DIR
    if not folder.is_dir():
        return []
    launch = read_status(folder / LAUNCH_FILE) or {}
    jobs = launch.get("jobs")
    if not isinstance(jobs, dict):
        jobs = {}
    rows: list[dict[str, Any]] = []
    for path in folder.glob("shard-*-of-*.json"):
        m = re.fullmatch(r"shard-(\d+)-of-(\d+)\.json", path.name)
        record = read_status(path)
        if m is None or record is None:
            continue
        status = str(record.get("status"))
        here = record.get("host") == socket.gethostname()
        if status == "running" and here and not _alive(record.get("pid")):
            status = "died"
        job = jobs.get(f"{m.group(1)}/{m.group(2)}") or {}
        rows.append(
            {
                "shard": f"{m.group(1)}/{m.group(2)}",
                "command": record.get("command"),
                "status": status,
                "done": f"{record.get('done')}/{record.get('owned')}",
                "host": f"{record.get('host')}:{record.get('pid')}",
                "job": job.get("job_id"),
                "updated": record.get("updated"),
                "error": record.get("error")
                or (job.get("stderr") if status != "complete" else None),
                "_order": (int(m.group(2)), int(m.group(1))),
            }
        )
    rows.sort(key=lambda r: r["_order"])
    for r in rows:
        del r["_order"]
    return rows


def unfinished(out: Path, count: int) -> list[int]:
    """The shards of ``count`` whose record is not complete (failed, died, requeued, never
    started), less those running in a live process on this host. A shard recorded as
    running on another host cannot be told from a dead one and is included: a second copy
    of a unit writes the same bytes."""
    left = []
    for k in range(count):
        record = read_status(status_file(out, Shard(k, count)))
        if record is not None and record.get("status") == "complete":
            continue
        if (
            record is not None
            and record.get("status") == "running"
            and record.get("host") == socket.gethostname()
            and _alive(record.get("pid"))
        ):
            continue
        left.append(k)
    return left
