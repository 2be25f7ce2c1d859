"""mliscan: Monotonic Linear Interpolation analysis (Lucas et al., ICML 2021).

The package root stays cheap to import: it only names the version. Import the
submodules you need (``mliscan.metrics``, ``mliscan.evaluate``, ...).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
