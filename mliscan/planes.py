"""The loss on the plane through three parameter vectors (Figures 1 and 9).

With origin A, the orthonormal basis (Gram-Schmidt over the interpolated tensors, float64)
u1 = (B - A)/||B - A|| and u2 = the part of C - A orthogonal to u1, normalised, the point at
coordinates (x, y) is A + x u1 + y u2. A sits at (0, 0), B at (||B - A||, 0) and C at
((C - A).u1, (C - A).u2). At every grid point batch-norm statistics are re-estimated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mliscan.errors import UsageError
from mliscan.evaluate import PathEvaluator
from mliscan.shard import WHOLE, Shard

# The default range covers the three points with this fraction of their extent as margin.
DEFAULT_MARGIN = 0.2


@dataclass
class Plane:
    origin: dict[str, torch.Tensor]
    u1: dict[str, torch.Tensor]
    u2: dict[str, torch.Tensor]
    coords: dict[str, tuple[float, float]]
    """Coordinates of the three points A, B, C."""

    def point(self, x: float, y: float) -> dict[str, torch.Tensor]:
        return {
            k: (self.origin[k].double() + x * self.u1[k] + y * self.u2[k]).to(self.origin[k].dtype)
            for k in self.u1
        }


def _dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(torch.sum(a[k] * b[k]) for k in a))


def make_plane(
    a: dict[str, torch.Tensor],
    b: dict[str, torch.Tensor],
    c: dict[str, torch.Tensor],
    keys: Sequence[str],
) -> Plane:
    da = {k: b[k].double() - a[k].double() for k in keys}
    dc = {k: c[k].double() - a[k].double() for k in keys}
    n1 = np.sqrt(_dot(da, da))
    if n1 == 0:
        raise UsageError("the first two points are identical: they span no plane")
    u1 = {k: v / n1 for k, v in da.items()}
    proj = _dot(dc, u1)
    rest = {k: dc[k] - proj * u1[k] for k in keys}
    n2 = np.sqrt(_dot(rest, rest))
    if n2 <= 1e-12 * max(n1, 1.0):
        raise UsageError("the three points are collinear: they span no plane")
    u2 = {k: v / n2 for k, v in rest.items()}
    coords = {"A": (0.0, 0.0), "B": (float(n1), 0.0), "C": (float(proj), float(n2))}
    return Plane(a, u1, u2, coords)


def default_range(
    plane: Plane, margin: float = DEFAULT_MARGIN
) -> tuple[float, float, float, float]:
    xs = [p[0] for p in plane.coords.values()]
    ys = [p[1] for p in plane.coords.values()]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    return (
        min(xs) - margin * span,
        max(xs) + margin * span,
        min(ys) - margin * span,
        max(ys) + margin * span,
    )


def evaluate_plane(
    evaluator: PathEvaluator,
    plane: Plane,
    resolution: int,
    bounds: tuple[float, float, float, float],
    progress: Callable[[int, int], None] | None = None,
    done: dict[tuple[int, int], dict[str, float | None]] | None = None,
    on_point: Callable[[tuple[int, int], dict[str, float | None]], None] | None = None,
    shard: Shard = WHOLE,
) -> list[dict[str, float | None]]:
    """Loss and accuracy on a resolution x resolution grid (row-major, y outer); a loss that
    is NaN or infinite (a range reaching weights where the model overflows) is None, so
    that the stored points and plane.json stay valid JSON (null). Points neither in
    ``done`` nor ``shard``'s (point n = j * resolution + i) are left out."""
    xs = np.linspace(bounds[0], bounds[1], resolution)
    ys = np.linspace(bounds[2], bounds[3], resolution)
    rows = []
    done = done or {}
    total = resolution * resolution
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            key = (i, j)
            if key not in done and not shard.owns(j * resolution + i):
                continue
            if key not in done:
                evaluator.set_state(plane.point(float(x), float(y)))
                loss, acc = evaluator.loss_and_accuracy()
                done[key] = {
                    "x": float(x),
                    "y": float(y),
                    "loss": finite_or_none(loss),
                    "accuracy": finite_or_none(acc),
                }
                if on_point:
                    on_point(key, done[key])
            rows.append(done[key])
            if progress:
                progress(len(rows), total)
    return rows


def anchor_losses(evaluator: PathEvaluator, plane: Plane) -> dict[str, float | None]:
    """The loss at A, B and C reconstructed from their plane coordinates."""
    out = {}
    for name, (x, y) in plane.coords.items():
        evaluator.set_state(plane.point(x, y))
        out[name] = finite_or_none(evaluator.loss_and_accuracy()[0])
    return out


def finite_or_none(value: float | None) -> float | None:
    """A number as stored in JSON: None (null) for NaN and infinities."""
    return None if value is None or not math.isfinite(value) else float(value)
