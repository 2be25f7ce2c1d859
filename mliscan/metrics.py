"""The paper's path metrics, as pure functions (Lucas et al., ICML 2021, Section 3).

All functions take plain arrays/tensors and return floats or arrays; none touches a model.
A loss curve containing NaN/Inf makes the loss metrics NaN ("undefined"), never a number
that looks meaningful.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch


def min_delta(losses: Sequence[float] | np.ndarray) -> float:
    """Smallest Delta >= 0 for which the sampled path is Delta-monotonic (Definition 1).

    ``max(0, max_{i<j} L[j] - L[i])``: the largest rise between any earlier and later point,
    computed exactly in one pass (a rise that begins at the last step counts:
    [0.78, 0.40, 0.70] gives 0.30).
    """
    values = np.asarray(losses, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return float("nan")
    running_min = np.minimum.accumulate(values)
    return float(max(0.0, np.max(values - running_min)))


def is_monotonic(delta: float, tolerance: float = 0.0) -> bool | None:
    """The MLI property at a tolerance: min-Delta <= tolerance (None when undefined)."""
    if not np.isfinite(delta):
        return None
    return bool(delta <= tolerance)


def converged(final_loss: float | None, threshold: float) -> bool:
    """Section 4.1: a run counts in the paper's tables when its final training loss is
    below the threshold (the only place this is decided: tables and figures agree)."""
    return final_loss is not None and bool(np.isfinite(final_loss)) and final_loss < threshold


def barrier(alphas: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray) -> float:
    """Loss barrier: max over alpha of L(alpha) - ((1 - alpha) L(0) + alpha L(1)).

    L(0) and L(1) are the curve's first and last values (the grid must span [0, 1]).
    """
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(losses, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        return float("nan")
    chord = (1.0 - a) * v[0] + a * v[-1]
    return float(np.max(v - chord))


_CHUNK = 1 << 20


def weight_distance(
    theta0: Mapping[str, torch.Tensor], theta1: Mapping[str, torch.Tensor], keys: Iterable[str]
) -> tuple[float, float]:
    """(||thetaT - theta0||_2, ||thetaT - theta0||_2 / ||theta0||_2) over ``keys``.

    The caller passes the parameter names (batch-norm affine weights included, running
    statistics excluded; see ``interpolate.TensorRoles``). Sums are taken in float64.
    """
    sq_diff = 0.0
    sq_init = 0.0
    for k in keys:
        a = theta0[k].detach().reshape(-1)
        b = theta1[k].detach().reshape(-1)
        for start in range(0, a.numel(), _CHUNK):  # float64 in slices: no model-size copies
            x = a[start : start + _CHUNK].to(torch.float64)
            y = b[start : start + _CHUNK].to(torch.float64)
            sq_diff += float(torch.sum((y - x) ** 2))
            sq_init += float(torch.sum(x**2))
    dist = float(np.sqrt(sq_diff))
    norm0 = float(np.sqrt(sq_init))
    return dist, (dist / norm0 if norm0 > 0 else float("inf"))


def gauss_integrand(velocity: torch.Tensor, acceleration: torch.Tensor) -> torch.Tensor:
    """Per-example speed of the Gauss map: ||d/dalpha (z' / ||z'||)||.

    With v = z'(alpha) and a = z''(alpha) (shape [N, D]) this equals
    ||a - (a . v_hat) v_hat|| / ||v||. Where v = 0 the tangent is undefined and the
    integrand is taken as 0 (a logit vector that does not move does not bend).
    Computed in float64.

    The engine supplies v and a exactly, by forward-mode differentiation in alpha. With batch
    norm, as in the paper's code, the statistics re-estimated at alpha are held fixed while
    differentiating (their own dependence on alpha is ignored). With ReLU the derivatives are
    those of the linear piece active at alpha (the kinks are ignored, as by the paper's
    autodiff), so a finite-difference estimate legitimately disagrees there; with smooth
    activations (tanh, GELU) the two agree.
    """
    v = velocity.detach().to(torch.float64).flatten(1)
    a = acceleration.detach().to(torch.float64).flatten(1)
    speed = torch.linalg.vector_norm(v, dim=1)
    safe = torch.where(speed > 0, speed, torch.ones_like(speed))
    v_hat = v / safe.unsqueeze(1)
    perp = a - (a * v_hat).sum(dim=1, keepdim=True) * v_hat
    out = torch.linalg.vector_norm(perp, dim=1) / safe
    return torch.where(speed > 0, out, torch.zeros_like(out))


def gauss_length(
    alphas: Sequence[float] | np.ndarray, integrand: Sequence[float] | np.ndarray
) -> float:
    """Length under the Gauss map (Definition 2): trapezoid rule of the integrand over alpha.

    Given the integrand averaged over examples at each alpha this is the *average* Gauss
    length, since the trapezoid rule is linear.
    """
    g = np.asarray(integrand, dtype=np.float64)
    if g.size == 0 or not np.all(np.isfinite(g)):
        return float("nan")
    return float(np.trapezoid(g, np.asarray(alphas, dtype=np.float64)))
