"""MLI along a training trajectory: train --save-every, mliscan trajectory over run folders,
checkpoint folders and Hub revision lists (offline, from a hand-built cache)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from mliscan.checkpoints import load_checkpoint
from mliscan.errors import UsageError
from mliscan.schemas import TRAJECTORY_SCHEMA
from mliscan.sources import expand_revisions, step_of
from mliscan.trajectories import find_steps
from tests import hubcache
from tests.conftest import TrainedRun, run_cli

QUICK = ["--alphas", 7, "--data-limit", 200, "-q"]


@pytest.fixture(scope="module")
def run(trained_run: TrainedRun) -> Path:
    """A digits MLP trained 5 epochs, its weights kept every 2 epochs."""
    from mliscan.spec import DataSpec

    return trained_run(
        "traj_run",
        arch_options={"hidden": "16"},
        data=DataSpec("digits", limit=200),
        optimizer="adam",
        lr=0.01,
        epochs=5,
        batch_size=32,
        save_every=2,
    )


def test_save_every_keeps_the_epochs_between_init_and_final(run: Path) -> None:
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["epoch-2.safetensors", "epoch-4.safetensors"]  # epoch 5 is final
    ck = load_checkpoint(run / "checkpoints" / "epoch-4.safetensors")
    assert ck.metadata["role"] == "checkpoint" and ck.metadata["epoch"] == 4
    final = load_checkpoint(run / "final.safetensors")
    assert set(ck.tensors) == set(final.tensors)
    record = json.loads((run / "run.json").read_text())
    assert [c["epoch"] for c in record["checkpoints"]] == [2, 4]
    assert record["config"]["save_every"] == 2


def test_a_run_without_save_every_records_the_same_config_as_before() -> None:
    from mliscan.train import TrainSpec

    assert "save_every" not in TrainSpec().to_dict()  # older runs stay finished


def test_steps_of_a_run_folder(run: Path) -> None:
    steps = find_steps(str(run))
    assert [(s.step, s.label) for s in steps] == [
        (0, "init"),
        (2, "epoch-2"),
        (4, "epoch-4"),
        (5, "final"),
    ]


def test_trajectory_of_a_run_matches_compare_and_resumes(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "traj"
    code, _, err = run_cli(["trajectory", run, "--out", out, *QUICK], capsys)
    assert code == 0, err
    table = pl.read_parquet(out / "trajectory.parquet")
    assert list(table.columns) == list(TRAJECTORY_SCHEMA)
    for column in (
        "step",
        "min_delta_from_init",
        "min_delta_to_final",
        "distance_from_init",
        "distance_to_final",
        "barrier_from_init",
        "barrier_to_final",
        "gauss_length_from_init",
    ):
        assert column in table.columns
    rows = table.to_dicts()
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    # θ₀ -> θ_T is both the last row's path from init and the first row's path to final, and
    # it is exactly what compare reports for the pair
    code, text, err = run_cli(
        ["compare", run / "init.safetensors", run / "final.safetensors", "--json", "-", *QUICK],
        capsys,
    )
    assert code in (0, 1), err
    whole = json.loads(text)
    for row, d in ((rows[-1], "from_init"), (rows[0], "to_final")):
        assert row[f"min_delta_{d}"] == pytest.approx(whole["min_delta"], abs=1e-12)
        assert row[f"barrier_{d}"] == pytest.approx(whole["barrier"], abs=1e-12)
        assert row[f"distance_{d}"] == pytest.approx(whole["distance"], rel=1e-12)
        assert row[f"gauss_length_{d}"] == pytest.approx(whole["gauss_length"], rel=1e-9)
    # zero-length paths: no distance, no rise, Gauss length undefined
    assert rows[0]["distance_from_init"] == 0 and rows[0]["gauss_length_from_init"] is None
    assert rows[-1]["min_delta_to_final"] == 0 and rows[-1]["path_id_to_final"] is None
    # a middle step: its two paths are real ones, and they differ
    mid = rows[1]
    assert mid["distance_from_init"] > 0 and mid["distance_to_final"] > 0
    # the distances along the trajectory from θ₀ grow here (a short Adam run)
    assert rows[1]["distance_from_init"] < rows[2]["distance_from_init"]
    assert (out / "trajectory.png").stat().st_size > 0
    curves = pl.read_parquet(out / "curves.parquet")
    assert set(curves["family"]) == {"from-init", "to-final"} and curves.height == 6 * 7
    stored = sorted((out / "paths").glob("*.json"))
    assert len(stored) == 5  # θ₀ -> θ_T is stored once
    stamps = {p: p.stat().st_mtime_ns for p in stored}
    code, _, err = run_cli(["trajectory", run, "--out", out, *QUICK], capsys)
    assert code == 0 and "0 paths computed, 5 found" in err
    assert {p: p.stat().st_mtime_ns for p in stored} == stamps
    assert pl.read_parquet(out / "trajectory.parquet").equals(table)


def test_a_folder_of_numbered_checkpoints_reads_in_step_order(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(run / "init.safetensors", folder / "step-0.safetensors")
    shutil.copy(run / "checkpoints" / "epoch-4.safetensors", folder / "step-400.safetensors")
    shutil.copy(run / "checkpoints" / "epoch-2.safetensors", folder / "step-20.safetensors")
    shutil.copy(run / "final.safetensors", folder / "final.safetensors")
    assert [s.label for s in find_steps(str(folder))] == [
        "step-0",
        "step-20",
        "step-400",
        "final",
    ]
    out = tmp_path / "t"
    code, text, err = run_cli(
        ["trajectory", folder, "--out", out, "--json", "-", "--no-gauss", *QUICK], capsys
    )
    assert code == 0, err
    doc = json.loads(text)
    assert [r["step"] for r in doc["steps"]] == [0, 20, 400, None]
    (folder / "notes.safetensors").write_bytes(b"")
    code, _, err = run_cli(["trajectory", folder, "--out", out, *QUICK], capsys)
    assert code == 2 and "notes.safetensors" in err and "step number" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hf:org/x"], "needs --revisions"),
        (["hf:org/x@main", "--revisions", "step0"], "not @REVISION"),
        (["RUN", "--revisions", "step0"], "goes with an hf:"),
        (["ONE"], "at least two checkpoints"),
        (["MISSING"], "MISSING"),
    ],
)
def test_bad_sources_are_one_line_errors(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(run / "init.safetensors", one / "step-0.safetensors")
    names = {"RUN": str(run), "ONE": str(one), "MISSING": str(tmp_path / "MISSING")}
    args = [names.get(a, a) for a in args]
    code, _, err = run_cli(["trajectory", *args, "--out", tmp_path / "o", "-q"], capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_step_numbers_come_from_names() -> None:
    assert step_of("step143000") == 143000
    assert step_of("epoch-5") == 5
    assert step_of("main") is None


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding four training revisions of a tiny GPT-2, plus main and a tag."""
    root = tmp_path_factory.mktemp("trajhub")
    src = root / "models"
    src.mkdir()
    for rev, steps in (("step0", 0), ("step1", 1), ("step10", 2), ("step2", 3)):
        files = hubcache.hf_model_files("gpt2", 0, steps=steps, parent=src)
        hubcache.add_revision(root / "cache", "org/tiny-gpt2", [rev], files)
    files = hubcache.hf_model_files("gpt2", 0, steps=4, parent=src)
    hubcache.add_revision(root / "cache", "org/tiny-gpt2", ["main", "v1.0"], files)
    (root / "corpus.txt").write_text(hubcache.CORPUS)
    return root


@pytest.fixture
def offline(hub: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_revision_patterns_expand_from_the_cache_in_step_order(offline: Path) -> None:
    assert expand_revisions("org/tiny-gpt2", "step*") == ["step0", "step1", "step2", "step10"]
    assert expand_revisions("org/tiny-gpt2", "step0,step10,main") == ["step0", "step10", "main"]
    assert expand_revisions("org/tiny-gpt2", "step1*,main") == ["step1", "step10", "main"]
    with pytest.raises(UsageError, match="matches no revision"):
        expand_revisions("org/tiny-gpt2", "epoch*")
    with pytest.raises(UsageError, match="not a valid revision"):
        expand_revisions("org/tiny-gpt2", "../x")


def test_trajectory_over_hub_revisions_offline(
    offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hubtraj"
    args = [
        "trajectory",
        "hf:org/tiny-gpt2",
        "--revisions",
        "step*,main",
        "--data",
        "text",
        "--data-file",
        offline / "corpus.txt",
        "--seq-len",
        16,
        "--data-limit",
        8,
        "--alphas",
        3,
        "--no-gauss",
        "--out",
        out,
        "--json",
        "-",
        "-q",
    ]
    code, text, err = run_cli(args, capsys)
    assert code == 0, err
    rows = json.loads(text)["steps"]
    assert [r["label"] for r in rows] == ["step0", "step1", "step2", "step10", "main"]
    assert [r["step"] for r in rows] == [0, 1, 2, 10, None]
    assert rows[0]["source"] == "hf:org/tiny-gpt2@step0"
    # each revision is a different point: positive distances both ways in the middle
    assert all(r["distance_from_init"] > 0 and r["distance_to_final"] > 0 for r in rows[1:-1])
    # θ₀ -> θ_T agrees with compare on the same two revisions
    code, text, err = run_cli(
        [
            "compare",
            "hf:org/tiny-gpt2@step0",
            "hf:org/tiny-gpt2@main",
            *args[4:15],
            "--json",
            "-",
            "-q",
        ],
        capsys,
    )
    assert code in (0, 1), err
    whole = json.loads(text)
    assert rows[-1]["min_delta_from_init"] == pytest.approx(whole["min_delta"], abs=1e-12)
    assert rows[0]["distance_to_final"] == pytest.approx(whole["distance"], rel=1e-12)
