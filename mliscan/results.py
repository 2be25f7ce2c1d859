"""Results as plain, stable JSON objects, written atomically."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mliscan import __version__, metrics
from mliscan.paths import atomic_write_json
from mliscan.pipeline import PairResult


def _num(x: float | None) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _list(a: np.ndarray | None) -> list[float | None] | None:
    return None if a is None else [_num(v) for v in a]


def pair_to_dict(r: PairResult) -> dict[str, Any]:
    c = r.curve
    return {
        "mliscan_version": __version__,
        "init": r.init_path,
        "final": r.final_path,
        "arch": r.arch,
        "arch_options": r.arch_options,
        "data": r.data,
        "bn": r.spec.bn.describe(),
        "alphas": [float(a) for a in c.alphas],
        "loss": _list(c.loss),
        "nonfinite_alphas": [
            float(a) for a, v in zip(c.alphas, c.loss, strict=True) if not np.isfinite(v)
        ],
        "accuracy": _list(c.accuracy),
        "gauss_integrand": _list(c.gauss_integrand),
        "min_delta": _num(r.min_delta),
        "monotonic": r.monotonic,
        "tolerance": r.tolerance,
        "distance": _num(r.distance),
        "normalized_distance": _num(r.normalized_distance),
        "gauss_length": _num(r.gauss_length),
        "barrier": _num(r.barrier),
        "loss_init": _num(c.loss[0]),
        "loss_final": _num(c.loss[-1]),
        "accuracy_final": None if c.accuracy is None else _num(c.accuracy[-1]),
        "device": r.device,
        "dtype": r.spec.dtype,
        "amp": r.spec.amp,
        "gauss_examples": r.spec.gauss_examples,
        "notes": r.notes,
        "timing": {k: round(v, 4) for k, v in r.timing.items()},
        "unrelated": _unrelated(r) if r.unrelated else None,
        "sources": r.sources,
    }


def _unrelated(r: PairResult) -> dict[str, Any]:
    """Figure 6: mean and standard deviation of the curves from fresh initialisations."""
    curves = np.stack([c.loss for c in r.unrelated])
    deltas = [metrics.min_delta(c.loss) for c in r.unrelated]
    mono = [metrics.is_monotonic(d, r.tolerance) for d in deltas]
    defined = [m for m in mono if m is not None]
    return {
        "seeds": r.unrelated_seeds,
        "mean_loss": _list(curves.mean(axis=0)),
        "std_loss": _list(curves.std(axis=0)),
        "min_delta": [_num(d) for d in deltas],
        "monotonic_share": (sum(defined) / len(defined)) if defined else None,
    }


def write_json(path: str, obj: dict[str, Any]) -> None:
    atomic_write_json(path, obj)
