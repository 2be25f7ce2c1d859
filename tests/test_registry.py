"""Adapter discovery through entry points; broken plugins do not take the CLI down."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from mliscan import registry
from mliscan.errors import UnknownAdapterError


def test_builtins_are_entry_points() -> None:
    eps = registry._entry_points()
    for name in ("mlp", "resnet20", "resnet32", "resnet44", "resnet56"):
        assert name in eps
        assert eps[name].value.startswith("mliscan.adapters.")


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UnknownAdapterError, match=r"choose one of .*mlp"):
        registry.get_adapter("nonesuch")


def test_broken_plugin_is_reported_and_others_work(monkeypatch: pytest.MonkeyPatch) -> None:
    real = registry._entry_points()
    broken = EntryPoint("broken", "no_such_module_xyz:Thing", registry.GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: {**real, "broken": broken})
    with pytest.raises(UnknownAdapterError, match="failed to load"):
        registry.get_adapter("broken")
    with pytest.warns(UserWarning, match="broken"):
        names = [a.name for a in registry.all_adapters()]
    assert "mlp" in names and "broken" not in names


def test_runtime_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    from mliscan.adapters.mlp import MLPAdapter

    class Tiny(MLPAdapter):
        name = "tiny-mlp"

    monkeypatch.setattr(registry, "_runtime", {})
    registry.register("tiny-mlp", Tiny)
    assert registry.get_adapter("tiny-mlp").name == "tiny-mlp"
    with pytest.warns(UserWarning, match="twice"):
        registry.register("mlp", Tiny)
    registry._cache.pop("mlp", None)
