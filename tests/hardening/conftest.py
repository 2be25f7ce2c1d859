"""Fixtures shared by the hardening tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished one-epoch run of a 4-unit digits MLP (trained once per test module, as before; tests
    copy it before changing anything in it)."""
    from mliscan.spec import DataSpec
    from mliscan.train import TrainSpec, train

    out = tmp_path_factory.mktemp("tiny")
    train(
        TrainSpec(
            arch_options={"hidden": "4"}, data=DataSpec("digits", limit=40), epochs=1, batch_size=20
        ),
        out,
    )
    return out
