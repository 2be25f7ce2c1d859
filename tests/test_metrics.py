"""Known answers for the paper's metrics (Section 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mliscan import metrics


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        ([3.0, 2.0, 1.0], 0.0),  # strictly decreasing
        ([1.0, 1.0, 1.0], 0.0),  # flat
        ([0.78, 0.40, 0.70], 0.30),  # a rise that begins at the last step
        ([1.0, 2.0, 0.5], 1.0),  # bump in the middle
        ([2.0, 1.0, 1.5, 0.2, 0.9], 0.7),  # largest later rise counts, not the first
        ([0.5, 2.0, 0.1, 1.9], 1.8),  # earlier minimum, later rise beats the first bump
        ([1.0, 3.0], 2.0),
        ([5.0], 0.0),
    ],
)
def test_min_delta_written_out_sequences(losses: list[float], expected: float) -> None:
    assert metrics.min_delta(losses) == pytest.approx(expected, abs=1e-12)


def test_min_delta_equals_brute_force_on_random_sequences() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.normal(size=rng.integers(2, 30))
        brute = max(0.0, max(x[j] - x[i] for i in range(len(x)) for j in range(i + 1, len(x))))
        assert metrics.min_delta(x) == pytest.approx(brute)


def test_min_delta_undefined_with_nan() -> None:
    assert math.isnan(metrics.min_delta([1.0, float("nan"), 0.5]))
    assert metrics.is_monotonic(float("nan")) is None


def test_monotonic_tolerance() -> None:
    assert metrics.is_monotonic(0.0, 0.0) is True
    assert metrics.is_monotonic(5e-4, 1e-3) is True
    assert metrics.is_monotonic(2e-3, 1e-3) is False


def test_barrier_known_values() -> None:
    alphas = np.linspace(0, 1, 5)
    # chord from 2 to 0: 2, 1.5, 1, 0.5, 0
    assert metrics.barrier(alphas, [2.0, 1.5, 1.0, 0.5, 0.0]) == pytest.approx(0.0)
    assert metrics.barrier(alphas, [2.0, 2.5, 1.0, 0.5, 0.0]) == pytest.approx(1.0)
    assert metrics.barrier(alphas, [2.0, 1.0, 0.5, 0.25, 0.0]) == pytest.approx(0.0)  # convex


def test_weight_distance() -> None:
    a = {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0]), "skip": torch.ones(3)}
    b = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([0.0, 0.0]), "skip": torch.zeros(3)}
    dist, norm = metrics.weight_distance(a, b, ["w", "b"])
    assert dist == pytest.approx(5.0)
    assert norm == pytest.approx(1.0)


def _arc(t: float, n: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    alphas = np.linspace(0, 1, n)
    a = torch.tensor(alphas)
    vel = torch.stack([-t * torch.sin(t * a), t * torch.cos(t * a), torch.zeros_like(a)], 1)
    acc = torch.stack(
        [-(t**2) * torch.cos(t * a), -(t**2) * torch.sin(t * a), torch.zeros_like(a)], 1
    )
    return alphas, vel, acc


@pytest.mark.parametrize("t", [0.3, 1.0, math.pi / 2, 2.5])
def test_gauss_length_of_circular_arc_is_its_angle(t: float) -> None:
    alphas, vel, acc = _arc(t, 50)
    integrand = metrics.gauss_integrand(vel, acc)
    assert torch.allclose(integrand, torch.full_like(integrand, t))
    assert metrics.gauss_length(alphas, integrand.numpy()) == pytest.approx(t, rel=1e-12)


def test_gauss_length_of_scaled_arc_is_unit_free() -> None:
    alphas, vel, acc = _arc(1.2, 50)
    integrand = metrics.gauss_integrand(7.0 * vel, 7.0 * acc)
    assert metrics.gauss_length(alphas, integrand.numpy()) == pytest.approx(1.2)


def test_gauss_length_of_line_is_zero() -> None:
    alphas = np.linspace(0, 1, 50)
    v = torch.tensor([[1.0, -2.0, 0.5]]).repeat(50, 1)
    # a line traversed at varying speed still has zero Gauss length: a parallel to v
    a = v * torch.linspace(-3, 3, 50).unsqueeze(1)
    integrand = metrics.gauss_integrand(v, a)
    assert metrics.gauss_length(alphas, integrand.numpy()) == pytest.approx(0.0, abs=1e-12)


def test_gauss_integrand_zero_velocity_is_zero() -> None:
    out = metrics.gauss_integrand(torch.zeros(2, 3), torch.ones(2, 3))
    assert torch.equal(out, torch.zeros(2, dtype=torch.float64))
