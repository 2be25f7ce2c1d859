"""One result record for a path: the JSON object and the Parquet rows come from it.

``PathResult`` holds a path's curve and what is known of its endpoints; its metrics are
computed by the pure functions of :mod:`mliscan.metrics` (one monotonic/tolerance rule:
``metrics.is_monotonic``). ``to_dict`` is the ``--json`` object, ``to_row`` the row of
``paths.parquet`` (schema ``PATH_SCHEMA``) and ``curve_rows`` the rows of ``curves.parquet``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mliscan import __version__, metrics
from mliscan.evaluate import Curve
from mliscan.spec import DEFAULT_TOLERANCE, EvalSpec

PATH_SCHEMA = {
    "path_id": "str",
    "family": "str",
    "a": "str",
    "b": "str",
    "own_pair": "bool",
    "min_delta": "f64",
    "monotonic": "bool",
    "barrier": "f64",
    "distance": "f64",
    "normalized_distance": "f64",
    "gauss_length": "f64",
    "loss_a": "f64",
    "loss_b": "f64",
    # with --align: the path before alignment (null otherwise)
    "unaligned_distance": "f64",
    "unaligned_barrier": "f64",
    "unaligned_min_delta": "f64",
}
CURVE_SCHEMA = {
    "path_id": "str",
    "family": "str",
    "a": "str",
    "b": "str",
    "alpha": "f64",
    "loss": "f64",
    "accuracy": "f64",
}


def num(x: float | None) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def num_list(a: Any) -> list[float | None] | None:
    return None if a is None else [num(v) for v in a]


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
    notes: list[str] = field(default_factory=list)
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
    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object (stable keys; NaN written as null)."""
        c = self.curve
        return {
            "mliscan_version": __version__,
            "init": self.init_path,
            "final": self.final_path,
            "arch": self.arch,
            "arch_options": self.arch_options,
            "data": self.data,
            "bn": self.spec.bn.describe(),
            "alphas": [float(a) for a in c.alphas],
            "loss": num_list(c.loss),
            "nonfinite_alphas": [
                float(a) for a, v in zip(c.alphas, c.loss, strict=True) if not np.isfinite(v)
            ],
            "accuracy": num_list(c.accuracy),
            "gauss_integrand": num_list(c.gauss_integrand),
            "min_delta": num(self.min_delta),
            "monotonic": self.monotonic,
            "tolerance": self.tolerance,
            "distance": num(self.distance),
            "normalized_distance": num(self.normalized_distance),
            "gauss_length": num(self.gauss_length),
            "barrier": num(self.barrier),
            "loss_init": num(c.loss[0]),
            "loss_final": num(c.loss[-1]),
            "accuracy_final": None if c.accuracy is None else num(c.accuracy[-1]),
            "device": self.device,
            "dtype": self.spec.dtype,
            "amp": self.spec.amp,
            "gauss_examples": self.spec.gauss_examples,
            "notes": self.notes,
            "paths": c.paths,
            "timing": {k: round(v, 4) for k, v in self.timing.items()},
            "unrelated": self._unrelated() if self.unrelated else None,
            "sources": self.sources,
            "alignment": None
            if self.alignment is None
            else {k: num(v) if isinstance(v, float) else v for k, v in self.alignment.items()},
        }

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
        return path_row({**self.stored(), **labels}, self.tolerance)

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

        record = {**self.to_dict(), "label": label or self.final_path}
        fig = curves_figure([record])
        if path is None:
            return fig
        save_figure_to(fig, path)
        return path

    def stored(self) -> dict[str, Any]:
        """What a store keeps of a path (enough to rebuild every row and metric)."""
        c = self.curve
        out = {
            "alphas": [float(a) for a in c.alphas],
            "loss": num_list(c.loss),
            "accuracy": num_list(c.accuracy),
            "gauss_integrand": num_list(c.gauss_integrand),
            "distance": num(self.distance),
            "normalized_distance": num(self.normalized_distance),
            "paths": c.paths,
            "notes": c.notes,
        }
        return out


_REPR_KEYS = ("min_delta", "monotonic", "barrier", "distance", "gauss_length")


def _short_number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v)


def _short_path(text: str, limit: int = 40) -> str:
    """A long endpoint name cut in the middle (the repr stays one readable line)."""
    return text if len(text) <= limit else text[: limit // 2 - 2] + "..." + text[-limit // 2 + 1 :]


# ---- stored records (grid, plane, report caches) ---------------------------------------------
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


def metrics_of(record: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The paper's metrics of a stored path record, by the same functions as ``PathResult``."""
    loss = [math.nan if v is None else v for v in record["loss"]]
    md = metrics.min_delta(loss)
    g = record.get("gauss_integrand")
    gl = (
        None
        if g is None
        else metrics.gauss_length(record["alphas"], [math.nan if v is None else v for v in g])
    )
    return {
        "min_delta": num(md),
        "monotonic": metrics.is_monotonic(md, tolerance),
        "barrier": num(metrics.barrier(record["alphas"], loss)),
        "distance": record["distance"],
        "normalized_distance": record["normalized_distance"],
        "gauss_length": num(gl),
        "loss_init": num(loss[0]),
        "loss_final": num(loss[-1]),
        "accuracy_final": None if record["accuracy"] is None else record["accuracy"][-1],
    }


def path_row(record: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The ``paths.parquet`` row of a stored path record (keys of ``PATH_SCHEMA``)."""
    m = metrics_of(record, tolerance)
    alignment = record.get("alignment") or {}
    return {
        "unaligned_distance": num(alignment.get("unaligned_distance")),
        "unaligned_barrier": num(alignment.get("unaligned_barrier")),
        "unaligned_min_delta": num(alignment.get("unaligned_min_delta")),
        "path_id": record.get("path_id"),
        "family": record.get("family"),
        "a": record.get("a"),
        "b": record.get("b"),
        "own_pair": record.get("own_pair"),
        "min_delta": m["min_delta"],
        "monotonic": m["monotonic"],
        "barrier": m["barrier"],
        "distance": m["distance"],
        "normalized_distance": m["normalized_distance"],
        "gauss_length": m["gauss_length"],
        "loss_a": m["loss_init"],
        "loss_b": m["loss_final"],
    }


def curve_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``curves.parquet`` rows of a stored path record (keys of ``CURVE_SCHEMA``)."""
    accs = record["accuracy"] or [None] * len(record["alphas"])
    return [
        {
            "path_id": record.get("path_id"),
            "family": record.get("family"),
            "a": record.get("a"),
            "b": record.get("b"),
            "alpha": alpha,
            "loss": loss,
            "accuracy": acc,
        }
        for alpha, loss, acc in zip(record["alphas"], record["loss"], accs, strict=True)
    ]
