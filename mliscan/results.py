"""The result of one path: the live ``PathResult`` and its typed record.

``PathResult`` holds a finished path's curve and what is known of its endpoints; its metrics
are computed by the pure functions of :mod:`mliscan.metrics` (one monotonic/tolerance rule:
``metrics.is_monotonic``). ``record()`` is its :class:`~mliscan.record.PathRecord`, the one
record every other form comes from: ``to_dict`` (the ``--json`` object), ``stored`` (what a
store keeps), ``to_row`` (a ``paths.parquet`` row, schema ``PATH_SCHEMA``). The functions
below read stored records (dicts) through the same record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mliscan import __version__, metrics
from mliscan.evaluate import Curve
from mliscan.record import Note, PathRecord, num, num_list
from mliscan.schemas import CURVE_SCHEMA, PATH_SCHEMA
from mliscan.spec import DEFAULT_TOLERANCE, EvalSpec

__all__ = [
    "CURVE_SCHEMA",
    "PATH_SCHEMA",
    "STORED_KEYS",
    "Note",
    "PathRecord",
    "PathResult",
    "curve_record",
    "curve_rows",
    "is_complete",
    "metrics_of",
    "num",
    "num_list",
    "path_row",
]


def curve_record(
    curve: Curve, distance: float, normalized_distance: float, **fields: Any
) -> PathRecord:
    """The record of an evaluated curve (its numbers as JSON holds them, its notes and
    paths), with ``fields`` (identity, description, tolerance) set."""
    fields.setdefault("notes", tuple(curve.notes))
    return PathRecord(
        alphas=tuple(float(a) for a in curve.alphas),
        loss=tuple(num_list(curve.loss) or ()),
        accuracy=None if curve.accuracy is None else tuple(num_list(curve.accuracy) or ()),
        gauss_integrand=(
            None if curve.gauss_integrand is None else tuple(num_list(curve.gauss_integrand) or ())
        ),
        distance=num(distance),
        normalized_distance=num(normalized_distance),
        paths=curve.paths,
        **fields,
    )


@dataclass(repr=False)
class PathResult:
    """A finished path from ``init`` (alpha = 0) to ``final`` (alpha = 1).

    ``repr`` is one line of the paper's metrics; in a notebook the result shows as a table
    (``_repr_html_``); ``to_dict()`` is everything."""

    init_path: str
    final_path: str
    arch: str
    arch_options: dict[str, Any]
    data: dict[str, Any]
    spec: EvalSpec
    curve: Curve
    distance: float
    normalized_distance: float
    tolerance: float = DEFAULT_TOLERANCE
    device: str = "cpu"
    notes: list[Note] = field(default_factory=list)
    """What the run found about its endpoints and model, each with its kind."""
    timing: dict[str, float] = field(default_factory=dict)
    unrelated: list[Curve] = field(default_factory=list)
    """Curves from fresh initialisations (seeds ``unrelated_seeds``) to the same final."""
    unrelated_seeds: list[int] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)
    """How each endpoint was resolved (hub repository, revision, commit hash)."""
    alignment: dict[str, Any] | None = None
    """--align: method, iterations, and the unaligned distance, barrier and min-Δ."""

    # ---- the paper's metrics (Section 3) ---------------------------------------------------
    @property
    def alphas(self) -> np.ndarray:
        return self.curve.alphas

    @property
    def loss(self) -> np.ndarray:
        return self.curve.loss

    @property
    def accuracy(self) -> np.ndarray | None:
        return self.curve.accuracy

    @property
    def min_delta(self) -> float:
        return metrics.min_delta(self.curve.loss)

    @property
    def monotonic(self) -> bool | None:
        return metrics.is_monotonic(self.min_delta, self.tolerance)

    @property
    def barrier(self) -> float:
        return metrics.barrier(self.curve.alphas, self.curve.loss)

    @property
    def gauss_length(self) -> float | None:
        if self.curve.gauss_integrand is None:
            return None
        return metrics.gauss_length(self.curve.alphas, self.curve.gauss_integrand)

    # ---- how it shows -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The metrics a reader looks at first, by name (what ``repr`` and the notebook
        table show)."""
        c = self.curve
        return {
            "min_delta": num(self.min_delta),
            "monotonic": self.monotonic,
            "barrier": num(self.barrier),
            "distance": num(self.distance),
            "normalized_distance": num(self.normalized_distance),
            "gauss_length": num(self.gauss_length),
            "loss_init": num(c.loss[0]),
            "loss_final": num(c.loss[-1]),
            "accuracy_final": None if c.accuracy is None else num(c.accuracy[-1]),
        }

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={_short_number(v)}"
            for k, v in self.summary().items()
            if k in _REPR_KEYS and (v is not None or k == "monotonic")
        )
        return (
            f"PathResult({_short_path(self.init_path)!r} -> {_short_path(self.final_path)!r}, "
            f"arch={self.arch!r}, alphas={len(self.curve.alphas)}, {shown})"
        )

    def _repr_html_(self) -> str:
        """A notebook's view: the endpoints, the settings and the metrics as a table."""
        import html

        rows = [
            ("init (α = 0)", self.init_path),
            ("final (α = 1)", self.final_path),
            ("architecture", self.arch),
            ("data", ", ".join(f"{k}={v}" for k, v in self.data.items() if v is not None)),
            ("alphas", len(self.curve.alphas)),
            ("batch norm", self.spec.bn.mode),
            ("tolerance", self.tolerance),
        ]
        rows += [(k.replace("_", " "), _short_number(v)) for k, v in self.summary().items()]
        rows += [("note", n) for n in self.notes]
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        return f"<table><caption>mliscan PathResult</caption>{body}</table>"

    # ---- the records -----------------------------------------------------------------------
    def record(self) -> PathRecord:
        """The typed record of this result: what ``--json`` writes, gates check, tables and
        figures show."""
        alignment = self.alignment
        return curve_record(
            self.curve,
            self.distance,
            self.normalized_distance,
            tolerance=self.tolerance,
            notes=tuple(self.notes),
            alignment=None
            if alignment is None
            else {k: num(v) if isinstance(v, float) else v for k, v in alignment.items()},
            init=self.init_path,
            final=self.final_path,
            arch=self.arch,
            arch_options=self.arch_options,
            data=self.data,
            bn=self.spec.bn.describe(),
            device=self.device,
            dtype=self.spec.dtype,
            amp=self.spec.amp,
            gauss_examples=self.spec.gauss_examples,
            timing={k: round(v, 4) for k, v in self.timing.items()},
            unrelated=self._unrelated() if self.unrelated else None,
            sources=self.sources,
            mliscan_version=__version__,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object (stable keys; NaN written as null): ``record().to_json()``."""
        return self.record().to_json()

    def _unrelated(self) -> dict[str, Any]:
        """Figure 6: mean and standard deviation of the curves from fresh initialisations."""
        curves = np.stack([c.loss for c in self.unrelated])
        deltas = [metrics.min_delta(c.loss) for c in self.unrelated]
        mono = [metrics.is_monotonic(d, self.tolerance) for d in deltas]
        defined = [m for m in mono if m is not None]
        return {
            "seeds": self.unrelated_seeds,
            "mean_loss": num_list(curves.mean(axis=0)),
            "std_loss": num_list(curves.std(axis=0)),
            "min_delta": [num(d) for d in deltas],
            "monotonic_share": (sum(defined) / len(defined)) if defined else None,
        }

    def to_row(self, **labels: Any) -> dict[str, Any]:
        """The ``paths.parquet`` row of this path (``labels``: path_id, family, a, b,
        own_pair), computed from the same stored record a grid keeps."""
        return self._curve_record().replace(tolerance=self.tolerance, **labels).to_row()

    def to_polars(self) -> Any:
        """The curve as a polars frame: alpha, loss, accuracy, gauss_integrand."""
        import polars as pl

        c = self.curve
        n = len(c.alphas)
        return pl.DataFrame(
            {
                "alpha": [float(a) for a in c.alphas],
                "loss": num_list(c.loss),
                "accuracy": num_list(c.accuracy) if c.accuracy is not None else [None] * n,
                "gauss_integrand": (
                    num_list(c.gauss_integrand) if c.gauss_integrand is not None else [None] * n
                ),
            },
            schema={k: pl.Float64 for k in ("alpha", "loss", "accuracy", "gauss_integrand")},
        )

    def plot(self, path: str | Any = None, label: str | None = None) -> Any:
        """The loss (and accuracy) curve: written to ``path`` (.png/.svg/.pdf) when given,
        else returned as a matplotlib figure."""
        from mliscan.plots import curves_figure, save_figure_to

        fig = curves_figure([self.record().replace(label=label or self.final_path)])
        if path is None:
            return fig
        save_figure_to(fig, path)
        return path

    def stored(self) -> dict[str, Any]:
        """What a store keeps of a path (enough to rebuild every row and metric): the curve's
        record (``PathRecord.to_stored``)."""
        return self._curve_record().to_stored()

    def _curve_record(self) -> PathRecord:
        """The record of the curve alone (its own notes; no description, no alignment)."""
        return curve_record(self.curve, self.distance, self.normalized_distance)


_REPR_KEYS = ("min_delta", "monotonic", "barrier", "distance", "gauss_length")


def _short_number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v)


def _short_path(text: str, limit: int = 40) -> str:
    """A long endpoint name cut in the middle (the repr stays one readable line)."""
    return text if len(text) <= limit else text[: limit // 2 - 2] + "..." + text[-limit // 2 + 1 :]


# ---- stored records (grid and trajectory stores, as dicts) ---------------------------------------------
STORED_KEYS = ("alphas", "loss", "accuracy", "distance", "normalized_distance")


def is_complete(record: Any) -> bool:
    """A stored path record with every key, equal-length curves and numbers where numbers go."""
    if not isinstance(record, dict) or any(k not in record for k in STORED_KEYS):
        return False
    alphas, loss, acc = record["alphas"], record["loss"], record["accuracy"]
    if not isinstance(alphas, list) or not isinstance(loss, list) or len(alphas) < 2:
        return False
    if len(loss) != len(alphas) or (acc is not None and len(acc) != len(alphas)):
        return False
    ok = (int, float, type(None))
    return all(isinstance(v, ok) for v in (*loss, *(acc or []))) and all(
        isinstance(a, (int, float)) for a in alphas
    )


# The metrics of a stored record, by name (trajectory tables read them this way).
METRIC_NAMES = (
    "min_delta",
    "monotonic",
    "barrier",
    "distance",
    "normalized_distance",
    "gauss_length",
    "loss_init",
    "loss_final",
    "accuracy_final",
)


def metrics_of(record: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The paper's metrics of a stored path record, by the same functions as ``PathResult``
    (``PathRecord``'s attributes, by name)."""
    r = PathRecord.from_json(record, tolerance)
    return {k: getattr(r, k) for k in METRIC_NAMES}


def path_row(record: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The ``paths.parquet`` row of a stored path record (keys of ``PATH_SCHEMA``)."""
    return PathRecord.from_json(record, tolerance).to_row()


def curve_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``curves.parquet`` rows of a stored path record (keys of ``CURVE_SCHEMA``)."""
    return PathRecord.from_json(record).curve_rows()
