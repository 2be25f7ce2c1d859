"""MLI along a training trajectory (``mliscan trajectory``): for every saved checkpoint θ_k,
the path θ₀ → θ_k (from the initialisation) and the path θ_k → θ_T (to the final weights).

Sources of a trajectory, in step order:

* a run folder of ``mliscan train --save-every K``: ``init.safetensors`` (step 0),
  ``checkpoints/epoch-<k>.safetensors`` (step k) and ``final.safetensors`` (the last epoch);
* a Hugging Face Trainer run folder (its ``checkpoint-N`` folders, step N);
* a folder of checkpoint files, each step read off the file name's last integer
  (``init.*`` is step 0, ``final.*`` the last);
* ``hf:ORG/NAME`` with a list of revisions (``step0,step1000,main`` or ``'step*'``, the
  patterns expanded from the local cache when offline).

Each path is one record of the same store as ``mliscan grid`` (``families.open_store``,
identity = the endpoints' content hashes and the evaluation settings), so an interrupted
trajectory resumes where it stopped and paths shared with a grid are not recomputed. A
zero-length path (θ₀ → θ₀, θ_T → θ_T) is not evaluated: its distance, rise and barrier are
0 and its Gauss length is undefined (null).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mliscan import families
from mliscan.errors import CheckpointMismatchError, CheckpointNotFoundError, UsageError
from mliscan.identity import key as identity_key
from mliscan.paths import CHECKPOINTS_DIR, FINAL_FILE, INIT_FILE, RUN_FILE, read_json
from mliscan.pipeline import Session
from mliscan.results import curve_rows, metrics_of
from mliscan.schemas import TRAJECTORY_DIRECTIONS, TRAJECTORY_METRICS
from mliscan.shard import WHOLE, Shard
from mliscan.sources import expand_revisions, parse_hf, step_of, trainer_checkpoints
from mliscan.store import ResultStore

DIRECTIONS = TRAJECTORY_DIRECTIONS
FAMILY = {"from_init": "from-init", "to_final": "to-final"}
METRICS = TRAJECTORY_METRICS
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MAX_STEP = 2**63 - 1  # the step column is a 64-bit integer
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.safetensors$")


@dataclass(frozen=True)
class Step:
    """One checkpoint of a trajectory."""

    step: int | None
    """The training step (epoch for mliscan runs); None when the name carries none (main)."""
    label: str
    source: str
    """What ``open_source`` reads: a path or an ``hf:REPO@REVISION``."""

    def __post_init__(self) -> None:
        if self.step is None:
            return
        if isinstance(self.step, bool) or not isinstance(self.step, int):
            raise UsageError(f"{self.source}: its step {self.step!r} is not a whole number")
        if not 0 <= self.step <= MAX_STEP:
            raise UsageError(
                f"{self.source}: its step {str(self.step)[:30]} is outside 0 .. 2^63-1 (steps "
                "are stored as 64-bit integers)"
            )


class Steps(list):
    """The checkpoints of a trajectory, first to last; ``skipped`` names the entries of the
    folder that were not taken as checkpoints (so that none is left out silently)."""

    skipped: list[str]

    def __init__(self, steps: Sequence[Step] = (), skipped: Sequence[str] = ()) -> None:
        super().__init__(steps)
        self.skipped = list(skipped)


def find_steps(source: str, revisions: str | None = None, *, offline: bool = False) -> Steps:
    """The checkpoints of a trajectory source, first (θ₀) to last (θ_T); two checkpoints
    with the same step (or name) are an error naming both."""
    if source.startswith("hf:"):
        if "@" in source:
            raise UsageError(
                f"{source}: give the revisions of a trajectory with --revisions, not @REVISION"
            )
        if revisions is None:
            raise UsageError(
                f"{source}: a trajectory over a Hub repository needs --revisions "
                "(e.g. step0,step1000,main or 'step*')"
            )
        repo, _ = parse_hf(source)
        names = expand_revisions(repo, revisions, offline=offline)
        steps = Steps([Step(step_of(n), n, f"hf:{repo}@{n}") for n in names])
    else:
        if revisions is not None:
            raise UsageError("--revisions goes with an hf:ORG/NAME source (a Hub repository)")
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise CheckpointNotFoundError(
                f"{source}: not a folder; give a run folder of `mliscan train --save-every K`, "
                "a folder of checkpoints, or hf:ORG/NAME --revisions ..."
            )
        steps = _folder_steps(folder)
    _check_distinct(steps)
    if len(steps) < 2:
        raise UsageError(
            f"{source}: a trajectory needs at least two checkpoints, found {len(steps)}"
            + (
                " (train with --save-every K to keep the checkpoints between init and final)"
                if len(steps) == 1
                else ""
            )
        )
    return steps


def _check_distinct(steps: Sequence[Step]) -> None:
    """Two checkpoints of one step (or one name) would make the table ambiguous."""
    by_step: dict[int, Step] = {}
    by_label: dict[str, Step] = {}
    for st in steps:
        other = by_step.get(st.step) if st.step is not None else None
        if other is None:
            other = by_label.get(st.label)
        if other is not None:
            what = (
                f"step {st.step}"
                if st.step is not None and st.step == other.step
                else (f"checkpoint {st.label!r}")
            )
            raise UsageError(
                f"{other.source} and {st.source} are both {what}: a trajectory takes one "
                "checkpoint per step; remove or rename one of them"
            )
        if st.step is not None:
            by_step[st.step] = st
        by_label[st.label] = st


def _hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _folder_steps(folder: Path) -> Steps:
    init, final = folder / INIT_FILE, folder / FINAL_FILE
    if init.is_file() and final.is_file():  # an mliscan run folder
        kept, skipped = [], []
        ckdir = folder / CHECKPOINTS_DIR
        if ckdir.is_dir():
            for f in sorted(ckdir.iterdir()):
                m = _EPOCH_FILE.match(f.name)
                if m and f.is_file():
                    kept.append(Step(int(m.group(1)), f"epoch-{m.group(1)}", str(f)))
                elif not _hidden(f):
                    skipped.append(f"{CHECKPOINTS_DIR}/{f.name}")
        skipped += [  # other weight files beside init and final
            f.name
            for f in sorted(folder.iterdir())
            if f.is_file() and f.suffix in WEIGHT_SUFFIXES and f not in (init, final)
        ]
        kept.sort(key=lambda s: s.step or 0)
        last = _final_epoch(folder)
        if last is not None and kept and last <= (kept[-1].step or 0):
            last = (
                None  # a record that disagrees with the files: no step is better than a wrong one
            )
        return Steps([Step(0, "init", str(init)), *kept, Step(last, "final", str(final))], skipped)
    trainer = trainer_checkpoints(folder)
    if trainer:
        used = {d for _, d in trainer}
        skipped = [
            f.name + ("/" if f.is_dir() else "")
            for f in sorted(folder.iterdir())
            if f not in used
            and not _hidden(f)
            and (f.name.startswith("checkpoint") or f.suffix in WEIGHT_SUFFIXES)
        ]
        return Steps([Step(step, d.name, str(d)) for step, d in trainer], skipped)
    found: list[Step] = []
    skipped = []
    for f in sorted(folder.iterdir()):
        if _hidden(f):
            continue
        if not f.is_file() or f.suffix not in WEIGHT_SUFFIXES:
            skipped.append(f.name + ("/" if f.is_dir() else ""))
            continue
        stem = f.name[: -len(f.suffix)]
        step = 0 if stem == "init" else step_of(stem)
        if stem != "final" and step is None:
            raise UsageError(
                f"{f}: the file name carries no step number; name checkpoints by their step "
                "(step-1000.safetensors, epoch-5.pt), or init.* and final.*"
            )
        found.append(Step(step, stem, str(f)))
    found.sort(key=lambda s: (s.label == "final", s.step or 0))
    return Steps(found, skipped)


def _final_epoch(folder: Path) -> int | None:
    """The epoch of a run's final weights, from its ``run.json`` (None if unreadable)."""
    try:
        record = read_json(folder / RUN_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    stopped = record.get("stopped_at_epoch")
    if isinstance(stopped, int) and not isinstance(stopped, bool):
        return stopped if 0 <= stopped <= MAX_STEP else None  # a damaged record: no step
    history = record.get("history")
    return len(history) if isinstance(history, list) and history else None


@dataclass
class Trajectory:
    """The measured trajectory: one row per checkpoint, and the paths' stored records.

    A shard (``measure(..., shard=)``) computes only its own paths; until every path is
    stored, ``missing`` names the others' and ``rows`` is empty."""

    rows: list[dict[str, Any]]
    records: dict[str, dict[str, Any]]
    """Stored path records by path id."""
    computed: int
    steps: Sequence[Step] = ()
    units: dict[tuple[int, str], str | None] = field(default_factory=dict)
    """The path id of each (step, direction); None for a zero-length path."""
    tolerance: float = 0.0

    @property
    def missing(self) -> list[str]:
        return [p for p in self.units.values() if p is not None and p not in self.records]

    def complete(self, store: ResultStore) -> bool:
        """Read the paths stored (by other shards) since ``measure``; make the table once
        every path is in."""
        for pid in self.missing:
            record = store.load(pid)
            if record is not None:
                self.records[pid] = record
        if self.missing:
            return False
        self.rows = _rows(self.steps, self.units, self.records, self.tolerance)
        return True

    def curves(self) -> list[dict[str, Any]]:
        """``curves.parquet`` rows: both paths of every checkpoint, α by α."""
        out = []
        for row in self.rows:
            for d in DIRECTIONS:
                pid = row[f"path_id_{d}"]
                if pid is None:
                    continue
                rec = dict(self.records[pid])
                rec.update(family=FAMILY[d], path_id=pid)
                out += curve_rows(rec)
        return out


def measure(
    steps: Sequence[Step],
    load: Callable[[Step, str], families.Endpoint],
    ctx: families.Context,
    settings: dict[str, Any],
    store: ResultStore,
    tolerance: float,
    on_done: Callable[[Step, str, bool], None] | None = None,
    shard: Shard = WHOLE,
) -> Trajectory:
    """Both paths of every step (missing ones computed and stored), then the table.

    ``load(step, kind)`` reads one checkpoint; only θ₀, θ_T and the current θ_k are held.
    With ``shard``, only its paths are computed (path 2k from θ₀ to step k, path 2k + 1
    from step k to θ_T); ``on_done`` follows those."""
    first = load(steps[0], "init")
    last = load(steps[-1], "optimum")
    _compatible(steps[0], first, steps[-1], last)
    units: dict[tuple[int, str], str | None] = {}
    records: dict[str, dict[str, Any]] = {}
    computed = 0
    for i, st in enumerate(steps):
        end = first if i == 0 else last if i == len(steps) - 1 else load(st, "optimum")
        _compatible(steps[0], first, st, end)
        for j, (d, (a, b)) in enumerate((("from_init", (first, end)), ("to_final", (end, last)))):
            mine = shard.owns(2 * i + j)
            if a.hash == b.hash:  # a zero-length path
                units[(i, d)] = None
                if on_done and mine:
                    on_done(st, d, False)
                continue
            pid = identity_key("path", [a.hash, b.hash], settings)
            units[(i, d)] = pid
            record = store.load(pid)
            fresh = record is None and mine
            if fresh:
                record = ctx.evaluate(a.tensors, b.tensors)
                record.update(
                    path_id=pid,
                    family=FAMILY[d],
                    a=a.label,
                    b=b.label,
                    a_hash=a.hash,
                    b_hash=b.hash,
                    own_pair=None,
                )
                store.put(pid, record)
                computed += 1
            if record is not None:
                records[pid] = record
            if on_done and mine:
                on_done(st, d, fresh)
    result = Trajectory([], records, computed, list(steps), units, tolerance)
    if not result.missing:
        result.rows = _rows(steps, units, records, tolerance)
    return result


def _rows(
    steps: Sequence[Step],
    units: dict[tuple[int, str], str | None],
    records: dict[str, dict[str, Any]],
    tolerance: float,
) -> list[dict[str, Any]]:
    """One row per checkpoint: both paths' metrics, and θ_k's own loss and accuracy."""
    rows: list[dict[str, Any]] = []
    for i, st in enumerate(steps):
        row: dict[str, Any] = {"step": st.step, "label": st.label, "source": st.source}
        for d in DIRECTIONS:
            pid = units[(i, d)]
            if pid is None:
                row.update(_zero_length(d))
                continue
            record = records[pid]
            m = metrics_of(record, tolerance)
            row.update({f"{k}_{d}": m[k] for k in METRICS}, **{f"path_id_{d}": pid})
            at = -1 if d == "from_init" else 0  # θ_k's own loss and accuracy
            row.setdefault("loss", _num(record["loss"][at]))
            acc = record.get("accuracy")
            row.setdefault("accuracy", _num(acc[at]) if acc else None)
        rows.append(row)
    return rows


def _compatible(
    first: Step, first_end: families.Endpoint, other: Step, other_end: families.Endpoint
) -> None:
    """The checkpoints of one trajectory pair up; a mismatch names the checkpoint."""
    try:
        families.check_compatible(first_end, other_end)
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(
            f"checkpoint {other.label} ({other.source}) does not match {first.label} "
            f"({first.source}): {exc}"
        ) from exc


def _zero_length(direction: str) -> dict[str, Any]:
    """The metrics of a path from a point to itself: no rise, no barrier, no length; the
    Gauss length (a mean over the curve's turning) is undefined."""
    values = {
        "min_delta": 0.0,
        "monotonic": True,
        "barrier": 0.0,
        "distance": 0.0,
        "normalized_distance": 0.0,
        "gauss_length": None,
    }
    return {**{f"{k}_{direction}": v for k, v in values.items()}, f"path_id_{direction}": None}


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def endpoint_loader(session: Session) -> Callable[[Step, str], families.Endpoint]:
    """Each step's checkpoint, opened and mapped as every study does (the session)."""

    def load(step: Step, kind: str) -> families.Endpoint:
        return families.load_endpoint(step.source, kind, step.label, None, session)

    return load
