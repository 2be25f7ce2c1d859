"""The Parquet tables' columns and types, declared once.

Each schema maps a column to one of the type names of ``TYPES`` (``str``, ``f64``,
``bool``, ``i64``); ``polars_schema`` turns one into polars dtypes (the one mapping, used by
the store's writer and the Python API's frames). Changing a column here changes every file
written after it: keep old columns as they are, so users' stored tables still read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Schema = dict[str, str]

# The type names a schema may use (polars dtypes by name, resolved in polars_schema).
TYPES = {"str": "Utf8", "f64": "Float64", "bool": "Boolean", "i64": "Int64"}

# paths.parquet (grid, mliscan.grid): one row per path.
PATH_SCHEMA: Schema = {
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

# curves.parquet (grid, trajectory, mliscan.grid): one row per path and alpha.
CURVE_SCHEMA: Schema = {
    "path_id": "str",
    "family": "str",
    "a": "str",
    "b": "str",
    "alpha": "f64",
    "loss": "f64",
    "accuracy": "f64",
}

# plane.parquet (plane): one row per grid point.
PLANE_SCHEMA: Schema = {"x": "f64", "y": "f64", "loss": "f64", "accuracy": "f64"}

# trajectory.parquet (trajectory): one row per checkpoint, both of its paths' metrics.
TRAJECTORY_DIRECTIONS = ("from_init", "to_final")
TRAJECTORY_METRICS = (
    "min_delta",
    "monotonic",
    "barrier",
    "distance",
    "normalized_distance",
    "gauss_length",
)
TRAJECTORY_SCHEMA: Schema = {
    "step": "i64",
    "label": "str",
    "source": "str",
    "loss": "f64",
    "accuracy": "f64",
    **{
        f"{m}_{d}": ("bool" if m == "monotonic" else "f64")
        for d in TRAJECTORY_DIRECTIONS
        for m in TRAJECTORY_METRICS
    },
    "path_id_from_init": "str",
    "path_id_to_final": "str",
}

# runs.parquet (report): the columns are a run's settings and metrics, so they follow the
# rows; these name the types of those that are not text.
RUNS_BOOL_COLUMNS = ("bn", "monotonic")
RUNS_FLOAT_COLUMNS = (
    "lr",
    "momentum",
    "weight_decay",
    "final_train_loss",
    "final_train_accuracy",
    "min_delta",
    "distance",
    "normalized_distance",
    "gauss_length",
    "barrier",
)
RUNS_INT_COLUMNS = ("epochs", "batch_size", "seed")


def runs_schema(row: Mapping[str, Any], columns: Iterable[str]) -> Schema:
    """The runs.parquet schema of a report's rows: ``columns`` of ``row`` (in the row's
    order), booleans and integers by name, floats by name or by value, the rest text."""
    keep = set(columns)
    return {k: _run_column_type(k, v) for k, v in row.items() if k in keep}


def _run_column_type(name: str, value: Any) -> str:
    if name in RUNS_BOOL_COLUMNS:
        return "bool"
    if isinstance(value, float) or name in RUNS_FLOAT_COLUMNS:
        return "f64"
    if name in RUNS_INT_COLUMNS:
        return "i64"
    return "str"


def polars_schema(schema: Mapping[str, str]) -> dict[str, Any]:
    """A schema as polars dtypes (polars is imported here, when a table is written)."""
    import polars as pl

    return {k: getattr(pl, TYPES[v]) for k, v in schema.items()}
