"""mliscan: Monotonic Linear Interpolation analysis (Lucas et al., ICML 2021).

The package root stays cheap to import: the Python API is loaded on first use.

    import mliscan
    r = mliscan.compare("runs/a/init.safetensors", "runs/a/final.safetensors")
    r.min_delta, r.monotonic, r.barrier, r.gauss_length

``mliscan.compare``, ``mliscan.grid``, ``mliscan.plane``, ``mliscan.trajectory``,
``mliscan.report`` and ``mliscan.track`` are documented in
``mliscan.api``; ``mliscan.PathResult`` is the result of a path.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["PathResult", "__version__", "compare", "grid", "plane", "report", "track", "trajectory"]

_API = {
    "compare": "mliscan.api",
    "grid": "mliscan.api",
    "track": "mliscan.api",
    "plane": "mliscan.api",
    "trajectory": "mliscan.api",
    "report": "mliscan.api",
    "PathResult": "mliscan.results",
}


def __dir__() -> list[str]:
    """The module's names and the API loaded on first use (``compare``, ``grid``, ...)."""
    return sorted({*globals(), *_API} - {"Any"})


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mliscan' has no attribute {name!r}")
