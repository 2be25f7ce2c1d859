"""The pair study: the straight path from an initialisation to its trained weights (with
``unrelated`` fresh initialisations to the same optimum, Figure 6). ``mliscan compare``,
``mliscan check``, ``mliscan demo`` and ``mliscan.compare`` all run :func:`run_pair`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mliscan.adapter import Adapter
from mliscan.evaluate import ProgressFn
from mliscan.pipeline import compare_pair
from mliscan.record import Note
from mliscan.results import PathResult
from mliscan.spec import AlignSpec, ArchSpec, DataSpec, EvalSpec, SourceSpec, VerdictSpec


@dataclass(frozen=True)
class PairStudy:
    """Two endpoints (paths or sources: ``hf:ORG/NAME@REV``, ``timm:NAME``, ``init:SOURCE``)
    and the specs the path is evaluated under."""

    init: str
    final: str
    source: SourceSpec = field(default_factory=SourceSpec)
    arch: ArchSpec | Adapter | str | None = None
    arch_options: dict[str, Any] | None = None
    data: DataSpec = field(default_factory=DataSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    verdict: VerdictSpec = field(default_factory=VerdictSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    unrelated_seeds: tuple[int, ...] = ()


def run_pair(
    study: PairStudy,
    progress: ProgressFn | None = None,
    on_note: Callable[[Note], None] | None = None,
) -> PathResult:
    """The path's result; ``progress(i, alpha, loss)`` per alpha, ``on_note`` hears the notes
    known before the evaluation (a swapped pair) as soon as they are."""
    return compare_pair(
        study.init,
        study.final,
        arch=study.arch,
        arch_options=study.arch_options,
        data=study.data,
        spec=study.eval,
        tolerance=study.verdict.tol,
        progress=progress,
        unrelated_seeds=list(study.unrelated_seeds),
        source=study.source,
        align_spec=study.align,
        on_note=on_note,
    )
