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


def test_adapter_flags_are_read_without_torch() -> None:
    """--help builds the adapters' flags as options: reading them imports no torch."""
    import subprocess
    import sys

    code = (
        "import sys, dataclasses; from mliscan import registry; cls = registry.arch_spec(); "
        "print('torch' in sys.modules, [f.name for f in cls.cli_fields()])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split(" ", 1)[0] == "False", out.stdout
    assert "'hidden', 'activation', 'bn', 'init_scheme'" in out.stdout
    assert registry.arch_spec() is registry.arch_spec()  # one class: specs[ArchSpec] finds it


def test_report_label_of_a_run_whose_adapter_is_gone() -> None:
    assert registry.report_label("resnet20", {"bn": True, "init": "fixup"}) == "BN-F"
    assert registry.report_label("no-such-plugin", {"bn": True, "init": "fixup"}) == "BN"
    assert registry.report_label(None, {}) == "NBN"
