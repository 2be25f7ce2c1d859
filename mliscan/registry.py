"""Adapter discovery through the ``mliscan.adapters`` entry-point group.

Built-in adapters are declared in ``pyproject.toml`` exactly as a plugin would declare its
own. Entry points are loaded lazily, by name; one that fails to load is reported as a
warning and the rest keep working. ``register`` adds adapters at run time (tests, notebooks).

The adapters' command-line flags (``arch_flags``, ``arch_spec``) are read without loading
any adapter: importing this module and asking for them imports no torch (``--help``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from mliscan.errors import CheckpointFormatError, UnknownAdapterError, UsageError
from mliscan.spec import AdapterFlag, ArchSpec

if TYPE_CHECKING:  # the module imports torch; it is loaded with the first adapter
    from mliscan.adapter import Adapter

GROUP = "mliscan.adapters"
_runtime: dict[str, Callable[[], Adapter]] = {}
_cache: dict[str, Adapter] = {}


def register(name: str, factory: Callable[[], Adapter]) -> None:
    """Register an adapter factory under ``name`` (warns when it shadows another)."""
    if name in _runtime or name in _entry_points():
        warnings.warn(f"adapter {name!r} registered twice; the later one wins", stacklevel=2)
    _runtime[name] = factory
    _cache.pop(name, None)


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            warnings.warn(
                f"adapter {ep.name!r} is declared twice ({found[ep.name].value}, {ep.value}); "
                "keeping the first",
                stacklevel=2,
            )
            continue
        found.setdefault(ep.name, ep)
    return found


def names() -> list[str]:
    return sorted(set(_entry_points()) | set(_runtime))


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name``."""
    from mliscan.adapter import Adapter

    if name in _cache:
        return _cache[name]
    if name in _runtime:
        adapter = _runtime[name]()
    else:
        eps = _entry_points()
        if name not in eps:
            raise UnknownAdapterError(
                f"no adapter named {name!r}; choose one of {', '.join(names())} "
                "(`mliscan adapters` lists them)"
            )
        try:
            factory = eps[name].load()
            adapter = factory()
        except Exception as exc:  # a broken plugin must not take the CLI down
            raise UnknownAdapterError(
                f"adapter {name!r} ({eps[name].value}) failed to load: {exc}"
            ) from exc
    if not isinstance(adapter, Adapter):
        raise UnknownAdapterError(f"adapter {name!r} did not produce an mliscan Adapter")
    _cache[name] = adapter
    return adapter


def all_adapters() -> list[Adapter]:
    """Every adapter that loads; failures are reported as warnings."""
    out = []
    for name in names():
        try:
            out.append(get_adapter(name))
        except UnknownAdapterError as exc:
            warnings.warn(str(exc), stacklevel=2)
    return out


def adapter_for_config(config: dict, where: str) -> Adapter:
    """The adapter that claims a checkpoint folder's ``config.json`` (transformers, timm)."""

    try:
        claimed = [a for a in all_adapters() if a.claims_config(config)]
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise CheckpointFormatError(
            f"{where}: a field has the wrong type ({type(exc).__name__}: {exc}); fix the file "
            "or pass --arch"
        ) from exc
    if not claimed:
        what = config.get("architectures") or config.get("model_type") or config.get("architecture")
        raise UsageError(
            f"{where}: no adapter recognises this config ({what}); pass --arch (one of "
            f"{', '.join(names())})"
        )
    return claimed[0]


def arch_flags() -> tuple[AdapterFlag, ...]:
    """The command-line flags of the built-in adapters (``--hidden``, ``--bn``, ...: each
    adapter names its own in ``Adapter.flags``), declared without torch in
    ``adapters/flags.py``; a plugin's options are given as ``--arch-opt KEY=VALUE``."""
    from mliscan.adapters.flags import FLAGS

    return FLAGS


@functools.cache
def arch_spec() -> type[ArchSpec]:
    """:class:`~mliscan.spec.ArchSpec` with a field per adapter flag: the command line's
    architecture options and config keys (one class, made once)."""
    return ArchSpec.with_flags(arch_flags())


def report_label(arch: str | None, options: Mapping[str, Any]) -> str:
    """How the paper's tables name a run of ``arch`` with ``options`` (its ``scheme``):
    the adapter's :meth:`~mliscan.adapter.Adapter.report_label`, or BN/NBN when no adapter
    of that name loads (a report of a plugin's runs read from their cached metrics)."""
    from mliscan.adapter import batch_norm_label

    try:
        adapter = get_adapter(str(arch))
    except UnknownAdapterError:
        return batch_norm_label(options)
    return adapter.report_label(options)
