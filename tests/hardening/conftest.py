"""Fixtures shared by the hardening tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TrainedRun


def tiny_settings(hidden: str = "4") -> dict[str, Any]:
    """A one-epoch digits MLP on 40 examples: the settings of every run these tests train."""
    from mliscan.spec import DataSpec

    return {
        "arch_options": {"hidden": hidden},
        "data": DataSpec("digits", limit=40),
        "epochs": 1,
        "batch_size": 20,
    }


@pytest.fixture(scope="module")
def tiny(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run of a 4-unit digits MLP, trained once per session; each test module
    gets its own copy, alone in its parent folder (fuzzed commands are given both, and report
    writes its metrics cache beside the runs it reads), and tests copy it before changing
    anything in it."""
    return trained_run("tiny", copy_to=tmp_path_factory.mktemp("tiny") / "run", **tiny_settings())
