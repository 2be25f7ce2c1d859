"""The typed path record: its forms round-trip, old stored records load, notes have kinds."""

from __future__ import annotations

import json

import pytest

from mliscan.record import NOTE_KINDS, Note, PathRecord, as_record, notes_of
from mliscan.schemas import CURVE_SCHEMA, PATH_SCHEMA


def _stored_path(**changes) -> PathRecord:
    record = PathRecord(
        alphas=(0.0, 0.5, 1.0),
        loss=(0.78, 0.40, 0.70),
        accuracy=(0.1, 0.5, 0.9),
        gauss_integrand=(1.0, 1.0, 1.0),
        distance=2.0,
        normalized_distance=0.5,
        paths={"loss": ["module"] * 3},
        notes=(Note("batch-statistics", "bn1 normalise by the batch"),),
        path_id="p0",
        family="init-optimum",
        a="seed0/init",
        b="seed0/final",
        a_hash="ha",
        b_hash="hb",
        own_pair=True,
    )
    return record.replace(**changes)


def _through_json(data: dict) -> dict:
    return json.loads(json.dumps(data))  # what a file holds


def test_a_stored_record_round_trips():
    record = _stored_path()
    stored = _through_json(record.to_stored())
    assert PathRecord.from_json(stored) == record
    assert list(stored)[-7:] == ["path_id", "family", "a", "b", "a_hash", "b_hash", "own_pair"]
    assert stored["notes"] == ["bn1 normalise by the batch"]  # texts, as always
    assert stored["note_kinds"] == ["batch-statistics"]


def test_the_json_object_round_trips():
    record = _stored_path(
        **dict.fromkeys(("path_id", "family", "a", "b", "a_hash", "b_hash", "own_pair")),
        init="i.safetensors",
        final="f.safetensors",
        arch="mlp",
        data={"name": "digits", "examples": 3},
        bn={"mode": "exact", "batch_size": "all"},
        tolerance=0.1,
        label="run0",
        timing={"total": 1.5},
        mliscan_version="0.1.0",
    )
    data = _through_json(record.to_json())
    assert PathRecord.from_json(data) == record
    assert data["label"] == "run0" and "path_id" not in data and "family" not in data
    assert data["min_delta"] == pytest.approx(0.30) and data["monotonic"] is False


def test_an_old_stored_record_loads():
    """A record stored before notes had kinds (no note_kinds, paths, alignment or hashes)."""
    old = {
        "alphas": [0.0, 0.5, 1.0],
        "loss": [1.0, None, 0.5],
        "accuracy": None,
        "gauss_integrand": None,
        "distance": 2.0,
        "normalized_distance": 0.5,
        "notes": ["something the run found"],
        "path_id": "p1",
        "family": "init-init",
        "a": "x",
        "b": "y",
        "own_pair": None,
        "key": "p1",
    }
    record = PathRecord.from_json(old, tolerance=0.01)
    assert record.notes == (Note("unknown", "something the run found"),)
    assert record.min_delta is None and record.monotonic is None  # a NaN in the curve
    assert record.nonfinite_alphas == [0.5]
    assert record.a_hash is None and record.alignment is None and record.paths == {}
    row = record.to_row()
    assert list(row) == list(PATH_SCHEMA)
    assert row["loss_a"] == 1.0 and row["loss_b"] == 0.5 and row["unaligned_distance"] is None
    assert [list(r) for r in record.curve_rows()] == [list(CURVE_SCHEMA)] * 3


def test_a_record_lacking_the_curve_is_refused():
    with pytest.raises(ValueError, match="no loss"):
        PathRecord.from_json({"alphas": [0.0, 1.0], "distance": 1.0, "normalized_distance": 1.0})


def test_the_tolerance_judges_when_reading():
    record = _stored_path(loss=(1.0, 1.05, 0.5))
    assert record.monotonic is False
    assert as_record(record.to_stored(), 0.1).monotonic is True
    assert as_record(record, 0.1).tolerance == 0.1


def test_alignment_gives_the_unaligned_columns():
    aligned = _stored_path(alignment={"units_moved": 3, "unaligned_distance": 4.0})
    row = aligned.to_row()
    assert row["unaligned_distance"] == 4.0 and row["unaligned_barrier"] is None


def test_note_kinds():
    assert Note("swapped", "the endpoints look swapped").warning
    assert Note("batch-norm", "partly made up").warning
    assert not Note("integrity", "the same commit").warning
    assert str(Note("identical", "one point")) == "one point"
    with pytest.raises(ValueError, match="unknown note kind"):
        Note("swaped", "x")
    assert set(NOTE_KINDS) >= {"endpoint", "swapped", "integrity", "fast-path", "unknown"}


def test_notes_read_back_by_kind():
    assert notes_of(["a", "b"], ["swapped", "integrity"]) == (
        Note("swapped", "a"),
        Note("integrity", "b"),
    )
    # kinds that do not match the texts, or a kind from a later version: unknown
    assert notes_of(["a", "b"], ["swapped"]) == (Note("unknown", "a"), Note("unknown", "b"))
    assert notes_of(["a"], ["from-the-future"]) == (Note("unknown", "a"),)
    assert notes_of(None, None) == ()
