"""The record of one path, typed: its curve, its metrics, its notes and what is known of it.

One record in every form a path takes: the ``--json`` object (:meth:`PathRecord.to_json`),
what a grid or trajectory store keeps (:meth:`PathRecord.to_stored`), the rows of
``paths.parquet`` and ``curves.parquet`` (:meth:`PathRecord.to_row`,
:meth:`PathRecord.curve_rows`); :meth:`PathRecord.from_json` reads any of them back, records
written by earlier versions included. Gates, tables, figures and callbacks read its
attributes. Its metrics are those of :mod:`mliscan.metrics`, computed from the JSON numbers
(None where a value is undefined), so a stored record and the ``--json`` object of the same
path give the same numbers.

A note says what a run found about its endpoints or its model; its ``kind``
(:data:`NOTE_KINDS`) is what a reader branches on, never its text.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mliscan.spec import DEFAULT_TOLERANCE

# What a note can be about. The --json object keeps ``notes`` (the texts, as always) and
# ``note_kinds`` beside them.
NOTE_KINDS = {
    "endpoint": "how an endpoint was read (a wrapper unwrapped, a key prefix stripped)",
    "swapped": "the endpoints look given in the wrong order",
    "integrity": "the endpoints may be mislabelled (one commit, byte-identical files)",
    "identical": "init and final weights are identical: the path is a single point",
    "batch-norm": "the paper mode's BN warm-up leaves the statistics partly made up",
    "batch-statistics": "layers normalise by the batch: every alpha sees the whole data",
    "integer-tensors": "integer or bool tensors differ between the endpoints",
    "fast-path": "a fast path disagreed with the module's own forward and was dropped",
    "derivative": "the Gauss length needed reverse mode or finite differences",
    "unknown": "a note of a record written before notes had kinds",
}
# The kinds said as warnings: the endpoints or the statistics look wrong.
WARNING_KINDS = frozenset({"swapped", "batch-norm"})


@dataclass(frozen=True)
class Note:
    """A note of a run: its ``kind`` (a key of :data:`NOTE_KINDS`) and its ``text``."""

    kind: str
    text: str

    def __post_init__(self) -> None:
        if self.kind not in NOTE_KINDS:
            raise ValueError(f"unknown note kind {self.kind!r} (one of {', '.join(NOTE_KINDS)})")

    @property
    def warning(self) -> bool:
        """Whether the note says that something looks wrong (shown as a warning)."""
        return self.kind in WARNING_KINDS

    def __str__(self) -> str:
        return self.text


def notes_of(texts: Any, kinds: Any) -> tuple[Note, ...]:
    """Notes read back from JSON: ``note_kinds`` when it matches ``notes``, else (records
    from before it, or a kind this version does not know) kind ``unknown``."""
    texts = [str(t) for t in texts or ()]
    if not isinstance(kinds, list) or len(kinds) != len(texts):
        kinds = ["unknown"] * len(texts)
    return tuple(
        Note(k if k in NOTE_KINDS else "unknown", t) for k, t in zip(kinds, texts, strict=True)
    )


def num(x: float | None) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def num_list(a: Any) -> list[float | None] | None:
    return None if a is None else [num(v) for v in a]


def _metrics() -> ModuleType:
    """:mod:`mliscan.metrics`, imported when a metric is read (it imports torch; tables
    and the command line's early errors do not need it)."""
    from mliscan import metrics

    return metrics


def _values(a: Sequence[float | None]) -> list[float]:
    """JSON numbers back to floats for the metrics (null is NaN: undefined)."""
    return [math.nan if v is None else v for v in a]


# The identity of a path in a study's store (grid, trajectory), in the order it is written.
IDENTITY_KEYS = ("path_id", "family", "a", "b", "a_hash", "b_hash", "own_pair")


@dataclass(frozen=True)
class PathRecord:
    """A path from alpha = 0 to alpha = 1 as a record: numbers as JSON holds them (None where
    undefined). The identity fields (``path_id`` ... ``b_hash``) are set for a path of a
    study's store, the description fields (``init`` ... ``mliscan_version``) for the result
    of one compare; each is None (or empty) where unknown."""

    alphas: tuple[float, ...]
    loss: tuple[float | None, ...]
    accuracy: tuple[float | None, ...] | None
    gauss_integrand: tuple[float | None, ...] | None
    distance: float | None
    normalized_distance: float | None
    tolerance: float = DEFAULT_TOLERANCE
    """The min-Δ at or below which the path counts as monotonic (applied when reading)."""
    paths: Mapping[str, list[str]] = field(default_factory=dict)
    """Which path computed each number (``mliscan.evaluate.PATHS``)."""
    notes: tuple[Note, ...] = ()
    alignment: Mapping[str, Any] | None = None
    """--align: method, iterations, units moved, the unaligned distance, barrier, min-Δ."""
    # a path of a study's store
    path_id: str | None = None
    family: str | None = None
    a: str | None = None
    b: str | None = None
    a_hash: str | None = None
    b_hash: str | None = None
    own_pair: bool | None = None
    # the result of one compare (its --json object)
    init: str | None = None
    final: str | None = None
    arch: str | None = None
    arch_options: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    """The data: name, split, examples, limit, data_dir (data_file, seq_len, max_tokens)."""
    bn: Mapping[str, Any] = field(default_factory=dict)
    """The BN statistics policy: mode, batch_size, max_batches, variance."""
    device: str | None = None
    dtype: str | None = None
    amp: str | None = None
    gauss_examples: int | None = None
    timing: Mapping[str, float] = field(default_factory=dict)
    unrelated: Mapping[str, Any] | None = None
    """Figure 6: seeds, mean and std of the curves from fresh inits, their min-Δ, share."""
    sources: Mapping[str, Any] = field(default_factory=dict)
    mliscan_version: str | None = None
    label: str | None = None
    """The path's name in tables and figures (the command line's; None: ``final``)."""

    # ---- the paper's metrics (Section 3), as the JSON writes them -------------------------
    @property
    def min_delta(self) -> float | None:
        return num(_metrics().min_delta(_values(self.loss)))

    @property
    def monotonic(self) -> bool | None:
        return _metrics().is_monotonic(_metrics().min_delta(_values(self.loss)), self.tolerance)

    @property
    def barrier(self) -> float | None:
        return num(_metrics().barrier(self.alphas, _values(self.loss)))

    @property
    def gauss_length(self) -> float | None:
        g = self.gauss_integrand
        return None if g is None else num(_metrics().gauss_length(self.alphas, _values(g)))

    @property
    def loss_init(self) -> float | None:
        return num(_values(self.loss)[0])

    @property
    def loss_final(self) -> float | None:
        return num(_values(self.loss)[-1])

    @property
    def accuracy_final(self) -> float | None:
        return None if self.accuracy is None else self.accuracy[-1]

    @property
    def nonfinite_alphas(self) -> list[float]:
        """The alphas where the loss is NaN/Inf (null in JSON)."""
        return [
            float(a)
            for a, v in zip(self.alphas, self.loss, strict=True)
            if v is None or not math.isfinite(v)
        ]

    @property
    def name(self) -> str:
        """What tables and figures call the path: its label, else the final endpoint."""
        return str(self.label if self.label is not None else self.final)

    def replace(self, **changes: Any) -> PathRecord:
        return dataclasses.replace(self, **changes)

    # ---- the forms -------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Mapping[str, Any], tolerance: float | None = None) -> PathRecord:
        """A record from its ``--json`` object or a stored record (keys it does not know,
        and the derived metrics, are left: they are recomputed). ``tolerance``: the one to
        judge by (default: the record's own, else :data:`DEFAULT_TOLERANCE`)."""
        missing = [
            k for k in ("alphas", "loss", "distance", "normalized_distance") if k not in data
        ]
        if missing:
            raise ValueError(f"not a path record: no {', '.join(missing)}")
        if tolerance is None:
            tolerance = data.get("tolerance")
        acc, g = data.get("accuracy"), data.get("gauss_integrand")
        return cls(
            alphas=tuple(data["alphas"]),
            loss=tuple(data["loss"]),
            accuracy=None if acc is None else tuple(acc),
            gauss_integrand=None if g is None else tuple(g),
            distance=data["distance"],
            normalized_distance=data["normalized_distance"],
            tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
            paths=data.get("paths") or {},
            notes=notes_of(data.get("notes"), data.get("note_kinds")),
            alignment=data.get("alignment"),
            **{k: data.get(k) for k in IDENTITY_KEYS},
            init=data.get("init"),
            final=data.get("final"),
            arch=data.get("arch"),
            arch_options=data.get("arch_options") or {},
            data=data.get("data") or {},
            bn=data.get("bn") or {},
            device=data.get("device"),
            dtype=data.get("dtype"),
            amp=data.get("amp"),
            gauss_examples=data.get("gauss_examples"),
            timing=data.get("timing") or {},
            unrelated=data.get("unrelated"),
            sources=data.get("sources") or {},
            mliscan_version=data.get("mliscan_version"),
            label=data.get("label"),
        )

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object (stable keys; NaN written as null); ``label`` and a study
        path's identity follow when set."""
        out = {
            "mliscan_version": self.mliscan_version,
            "init": self.init,
            "final": self.final,
            "arch": self.arch,
            "arch_options": dict(self.arch_options),
            "data": dict(self.data),
            "bn": dict(self.bn),
            "alphas": [float(a) for a in self.alphas],
            "loss": list(self.loss),
            "nonfinite_alphas": self.nonfinite_alphas,
            "accuracy": None if self.accuracy is None else list(self.accuracy),
            "gauss_integrand": None if self.gauss_integrand is None else list(self.gauss_integrand),
            "min_delta": self.min_delta,
            "monotonic": self.monotonic,
            "tolerance": self.tolerance,
            "distance": num(self.distance),
            "normalized_distance": num(self.normalized_distance),
            "gauss_length": self.gauss_length,
            "barrier": self.barrier,
            "loss_init": self.loss_init,
            "loss_final": self.loss_final,
            "accuracy_final": self.accuracy_final,
            "device": self.device,
            "dtype": self.dtype,
            "amp": self.amp,
            "gauss_examples": self.gauss_examples,
            "notes": [n.text for n in self.notes],
            "note_kinds": [n.kind for n in self.notes],
            "paths": dict(self.paths),
            "timing": dict(self.timing),
            "unrelated": None if self.unrelated is None else dict(self.unrelated),
            "sources": dict(self.sources),
            "alignment": self._alignment(),
        }
        if self.label is not None:
            out["label"] = self.label
        out.update(self._identity())
        return out

    def to_stored(self) -> dict[str, Any]:
        """What a store keeps of a path (enough to rebuild every row and metric): the curve,
        the distances, notes and alignment, then a study path's identity."""
        out = {
            "alphas": [float(a) for a in self.alphas],
            "loss": list(self.loss),
            "accuracy": None if self.accuracy is None else list(self.accuracy),
            "gauss_integrand": None if self.gauss_integrand is None else list(self.gauss_integrand),
            "distance": num(self.distance),
            "normalized_distance": num(self.normalized_distance),
            "paths": dict(self.paths),
            "notes": [n.text for n in self.notes],
            "note_kinds": [n.kind for n in self.notes],
            "alignment": self._alignment(),
        }
        out.update(self._identity())
        return out

    def _identity(self) -> dict[str, Any]:
        """A study path's identity keys (all of them, when it has one), else none."""
        identity = {k: getattr(self, k) for k in IDENTITY_KEYS}
        return identity if any(v is not None for v in identity.values()) else {}

    def _alignment(self) -> dict[str, Any] | None:
        a = self.alignment
        return (
            None if a is None else {k: num(v) if isinstance(v, float) else v for k, v in a.items()}
        )

    def to_row(self) -> dict[str, Any]:
        """The ``paths.parquet`` row (the columns of ``PATH_SCHEMA``)."""
        alignment = self.alignment or {}
        return {
            "path_id": self.path_id,
            "family": self.family,
            "a": self.a,
            "b": self.b,
            "own_pair": self.own_pair,
            "min_delta": self.min_delta,
            "monotonic": self.monotonic,
            "barrier": self.barrier,
            "distance": self.distance,
            "normalized_distance": self.normalized_distance,
            "gauss_length": self.gauss_length,
            "loss_a": self.loss_init,
            "loss_b": self.loss_final,
            "unaligned_distance": num(alignment.get("unaligned_distance")),
            "unaligned_barrier": num(alignment.get("unaligned_barrier")),
            "unaligned_min_delta": num(alignment.get("unaligned_min_delta")),
        }

    def curve_rows(self) -> list[dict[str, Any]]:
        """The ``curves.parquet`` rows, one per alpha (the columns of ``CURVE_SCHEMA``)."""
        accs = self.accuracy or (None,) * len(self.alphas)
        return [
            {
                "path_id": self.path_id,
                "family": self.family,
                "a": self.a,
                "b": self.b,
                "alpha": alpha,
                "loss": loss,
                "accuracy": acc,
            }
            for alpha, loss, acc in zip(self.alphas, self.loss, accs, strict=True)
        ]


def as_record(record: PathRecord | Mapping[str, Any], tolerance: float | None = None) -> PathRecord:
    """A record as itself; a JSON object or stored record read as one (callers that still
    hold dicts)."""
    if isinstance(record, PathRecord):
        return record if tolerance is None else record.replace(tolerance=tolerance)
    return PathRecord.from_json(record, tolerance)
