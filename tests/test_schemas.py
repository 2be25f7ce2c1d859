"""The Parquet schemas, declared once."""

from __future__ import annotations

import polars as pl

from mliscan import schemas


def test_polars_schema_maps_every_type():
    assert schemas.polars_schema({"a": "str", "b": "f64", "c": "bool", "d": "i64"}) == {
        "a": pl.Utf8,
        "b": pl.Float64,
        "c": pl.Boolean,
        "d": pl.Int64,
    }
    for schema in (
        schemas.PATH_SCHEMA,
        schemas.CURVE_SCHEMA,
        schemas.PLANE_SCHEMA,
        schemas.TRAJECTORY_SCHEMA,
    ):
        assert set(schema.values()) <= set(schemas.TYPES)


def test_runs_schema_types_by_name_and_value():
    row = {
        "run": "a",
        "bn": True,
        "lr": 1,  # an integer learning rate is still a float column
        "seed": 0,
        "epochs": 3,
        "scheme": "x",
        "min_delta": None,
        "extra": 0.5,
        "loss": [1.0],
    }
    schema = schemas.runs_schema(row, [k for k in row if k != "loss"])
    assert schema == {
        "run": "str",
        "bn": "bool",
        "lr": "f64",
        "seed": "i64",
        "epochs": "i64",
        "scheme": "str",
        "min_delta": "f64",
        "extra": "f64",
    }
