"""The trajectory study: θ₀ → θ_k and θ_k → θ_T for every saved checkpoint θ_k, through
the grid's store (resumable, shared by shards). ``mliscan trajectory`` and
``mliscan.trajectory`` both run :func:`run_trajectory`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mliscan import families as g
from mliscan import trajectories as tr
from mliscan.adapter import Adapter
from mliscan.data import Dataset
from mliscan.errors import short_list
from mliscan.pipeline import open_endpoint, setup
from mliscan.record import PathRecord, as_record
from mliscan.runners import TRAJECTORY_DEFAULTS
from mliscan.runners.events import SILENT, Events, resume_hint
from mliscan.schemas import CURVE_SCHEMA, TRAJECTORY_SCHEMA
from mliscan.shard import WHOLE, Shard, ShardLog
from mliscan.spec import ArchSpec, DataSpec, EvalSpec, SourceSpec, VerdictSpec


@dataclass(frozen=True)
class TrajectoryStudy:
    """A run folder, a folder of checkpoints, a Trainer run, or ``hf:ORG/NAME`` with
    ``revisions``; and the specs every path is evaluated under."""

    source_text: str
    out: Path
    revisions: str | None = None
    source: SourceSpec = field(default_factory=SourceSpec)
    arch: ArchSpec | Adapter | str | None = None
    arch_options: dict[str, Any] | None = None
    data: DataSpec | Dataset = field(default_factory=DataSpec)
    eval: EvalSpec = field(default_factory=lambda: EvalSpec(**TRAJECTORY_DEFAULTS))
    verdict: VerdictSpec = field(default_factory=VerdictSpec)
    shard: Shard = WHOLE


@dataclass
class TrajectoryOutcome:
    """One row per checkpoint (both paths' metrics) once every path is stored."""

    complete: bool
    paths_total: int
    stored: int
    computed: int
    settings: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, PathRecord] = field(default_factory=dict)
    """Each stored path by its id, judged at the study's tolerance."""

    @property
    def reused(self) -> int:
        return len(self.records) - self.computed

    @property
    def files(self) -> list[str]:
        return ["trajectory.parquet", "curves.parquet"] if self.complete else []

    def to_dict(self, source: str) -> dict[str, Any]:
        """The ``--json`` document."""
        return {"source": source, "settings": self.settings, "steps": self.rows}


def run_trajectory(study: TrajectoryStudy, events: Events = SILENT) -> TrajectoryOutcome:
    """Find the steps, evaluate this shard's missing paths (stored as they are done), and
    when every path is stored write ``trajectory.parquet`` and ``curves.parquet``. A
    KeyboardInterrupt leaves the finished paths stored and is re-raised with a
    ``resume_hint``."""
    spec, part, out, text = study.eval, study.shard, study.out, study.source_text
    steps = tr.find_steps(text, study.revisions, offline=study.source.offline)
    if steps.skipped:  # every entry of the folder is either a checkpoint or named here
        events.say(
            f"trajectory: {len(steps.skipped)} entries of {text} are not checkpoints "
            f"and are skipped: {short_list(steps.skipped)}"
        )
    first = open_endpoint(steps[0].source, study.source)
    session = setup(first, study.arch, study.arch_options, study.data, spec, study.source)
    adapter, options = session.choice.adapter, session.choice.options
    settings = g.settings_of(
        spec, session.data_record(), adapter.name, adapter.options_to_dict(options)
    )
    store = g.open_store(out)
    engine = g.Context(adapter, session.module, session.prepared, spec)
    events.say(
        f"trajectory: {len(steps)} checkpoints ({steps[0].label} … {steps[-1].label}) -> "
        f"{2 * len(steps) - 2} paths, stored in {out}"
    )
    log = ShardLog(out, part, "trajectory", 2 * len(steps))
    try:
        with log, events.progress(part.size(2 * len(steps)), "paths") as tick:

            def done(st: tr.Step, d: str, new: bool) -> None:
                tick(f"{st.label} {tr.FAMILY[d]}")
                log.unit(new)

            result = tr.measure(
                steps,
                tr.endpoint_loader(session),
                engine,
                settings,
                store,
                study.verdict.tol,
                done,
                part,
            )
    except KeyboardInterrupt as exc:
        resume_hint(exc, f"the finished paths are saved in {out}")
        raise
    n = sum(pid is not None for pid in result.units.values())
    with store.lock():  # the shard that finds every path stored writes the tables
        if not result.complete(store):
            events.say(
                f"trajectory: shard {part.label} is done; {n - len(result.missing)} of the {n} "
                f"paths are in {out}, and the shard that stores the last one writes the tables"
            )
            return TrajectoryOutcome(False, n, n - len(result.missing), result.computed, settings)
        curves = result.curves()
        store.write_parquet("trajectory.parquet", result.rows, TRAJECTORY_SCHEMA)
        store.write_parquet("curves.parquet", curves, CURVE_SCHEMA)
    tol = study.verdict.tol
    records = {pid: as_record(r, tol) for pid, r in result.records.items()}
    return TrajectoryOutcome(True, n, n, result.computed, settings, result.rows, curves, records)
