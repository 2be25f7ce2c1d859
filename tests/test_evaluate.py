"""The interpolation engine against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from mliscan import metrics
from mliscan.adapter import DataInfo
from mliscan.evaluate import PathEvaluator, alpha_grid, prepare_data
from mliscan.registry import get_adapter
from mliscan.spec import BNSpec, EvalSpec


def _pair(options: dict, dtype=torch.float64, n=200, seed=0):
    adapter = get_adapter("mlp")
    opts = adapter.parse_options(options)
    info = DataInfo((1, 8, 8), 10)
    torch.manual_seed(seed)
    module = adapter.build(opts, info)
    t0 = {k: v.clone() for k, v in module.state_dict().items()}
    torch.manual_seed(seed + 1)
    other = adapter.build(opts, info)
    # a trained-looking endpoint: far from init, smooth path
    t1 = {
        k: (v * 3 + 0.2 * torch.randn_like(v)) if v.is_floating_point() else v
        for k, v in other.state_dict().items()
    }
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    module = module.to(dtype)
    data = prepare_data(adapter, x, y, torch.device("cpu"), dtype)
    return adapter, module, t0, t1, data


def _fd_gauss_length(module: nn.Module, t0, t1, x: torch.Tensor, n_fine: int = 4001) -> float:
    """Independent estimate: tangents by finite differences on a fine float64 grid, length of
    the normalised-tangent curve as a polyline, averaged over examples."""
    alphas = np.linspace(0, 1, n_fine)
    names = [k for k, _ in module.named_parameters()]
    zs = []
    with torch.no_grad():
        for a in alphas:
            p = {k: t0[k].double() + a * (t1[k].double() - t0[k].double()) for k in names}
            zs.append(functional_call(module, p, (x,)).numpy())
    z = np.stack(zs)  # [A, N, D]
    v = np.gradient(z, alphas, axis=0, edge_order=2)
    v_hat = v / np.linalg.norm(v, axis=2, keepdims=True)
    per_example = np.linalg.norm(np.diff(v_hat, axis=0), axis=2).sum(axis=0)
    return float(per_example.mean())


@pytest.mark.parametrize("method", ["auto", "jvp"])
def test_gauss_length_matches_finite_differences_tanh(method: str) -> None:
    adapter, module, t0, t1, data = _pair({"hidden": "12,12", "activation": "tanh"})
    spec = EvalSpec(alphas=201, dtype="float64", gauss_method=method)
    ev = PathEvaluator(adapter, module, t0, t1, data, spec)
    assert ev.fast_gauss == (method == "auto")
    curve = ev.run(alpha_grid(201))
    engine = metrics.gauss_length(curve.alphas, curve.gauss_integrand)
    fd = _fd_gauss_length(module, t0, t1, data.inputs)
    assert engine > 0.05
    assert engine == pytest.approx(fd, rel=1e-3)


@pytest.mark.parametrize("method", ["auto", "jvp"])
def test_gauss_integrand_with_batch_norm_matches_fd_with_frozen_statistics(method: str) -> None:
    adapter, module, t0, t1, data = _pair({"hidden": "12,12", "activation": "tanh", "bn": True})
    spec = EvalSpec(alphas=9, dtype="float64", gauss_method=method, bn=BNSpec(batch_size=64))
    ev = PathEvaluator(adapter, module, t0, t1, data, spec)
    names = ev.roles.interpolated
    h = 1e-4
    for alpha in alpha_grid(9):
        ev.set_alpha(alpha)  # re-estimates the statistics at alpha, then holds them fixed
        engine = ev.gauss_integrand(alpha)

        def z(a: float) -> np.ndarray:
            p = {k: t0[k].double() + a * (t1[k].double() - t0[k].double()) for k in names}
            with torch.no_grad():
                return functional_call(module, p, (data.inputs,)).numpy()

        zm2, z0, zp2 = z(alpha - 2 * h), z(alpha), z(alpha + 2 * h)
        v_plus = (zp2 - z0) / (2 * h)
        v_minus = (z0 - zm2) / (2 * h)
        u_plus = v_plus / np.linalg.norm(v_plus, axis=1, keepdims=True)
        u_minus = v_minus / np.linalg.norm(v_minus, axis=1, keepdims=True)
        fd = float(np.linalg.norm(u_plus - u_minus, axis=1).mean() / (2 * h))
        assert engine == pytest.approx(fd, rel=1e-3), alpha


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
@pytest.mark.parametrize("bn", [False, True])
def test_fast_gauss_pass_equals_nested_jvp(activation: str, bn: bool) -> None:
    adapter, module, t0, t1, data = _pair(
        {"hidden": "16,16", "activation": activation, "bn": bn}, dtype=torch.float32
    )
    curves = {}
    for method in ("auto", "jvp"):
        ev = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(alphas=7, gauss_method=method))
        curves[method] = ev.run(alpha_grid(7))
    np.testing.assert_allclose(
        curves["auto"].gauss_integrand, curves["jvp"].gauss_integrand, rtol=1e-5
    )
    np.testing.assert_allclose(curves["auto"].loss, curves["jvp"].loss, rtol=1e-6)


def test_endpoints_and_midpoint_are_the_interpolated_models() -> None:
    adapter, module, t0, t1, data = _pair({"hidden": "8"}, dtype=torch.float32)
    ev = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(alphas=3, gauss=False))
    curve = ev.run([0.0, 0.3, 1.0])
    for alpha, loss in zip([0.0, 0.3, 1.0], curve.loss, strict=True):
        ref = adapter.build(adapter.parse_options({"hidden": "8"}), DataInfo((1, 8, 8), 10))
        state = {k: t0[k] + alpha * (t1[k] - t0[k]) for k in t0}
        if alpha == 1.0:
            state = t1
        ref.load_state_dict(state)
        with torch.no_grad():
            expected = nn.functional.cross_entropy(ref(data.inputs), data.targets).item()
        assert loss == pytest.approx(expected, rel=1e-6)


def test_integer_buffers_are_copied_and_bn_stats_re_estimated() -> None:
    adapter, module, t0, t1, data = _pair({"hidden": "8", "bn": True}, dtype=torch.float32)
    t1 = dict(t1)
    t1["1.num_batches_tracked"] = torch.tensor(999)
    ev = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(alphas=3, gauss=False))
    assert "1.running_mean" in ev.roles.bn_stats
    assert "1.num_batches_tracked" in ev.roles.copied
    assert "1.weight" in ev.roles.parameters and "1.running_mean" not in ev.roles.parameters
    # integer tensors come from the nearer endpoint: theta_0 below alpha = 0.5, theta_T on
    ev.set_alpha(0.25)
    assert int(module[1].num_batches_tracked) == int(t0["1.num_batches_tracked"])
    ev.set_alpha(0.5)
    assert int(module[1].num_batches_tracked) == 999
    # a BN module's own batch counter is not read by its eval forward: no note for it
    assert ev.interp.differing_copied(module) == []
    hidden = module[0](data.inputs)
    torch.testing.assert_close(module[1].running_mean, hidden.mean(0), rtol=1e-4, atol=1e-5)

    interp = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(bn=BNSpec(mode="interpolate")))
    assert "1.running_mean" in interp.roles.interpolated
    interp.set_alpha(0.5)
    torch.testing.assert_close(
        module[1].running_mean,
        t0["1.running_mean"] + 0.5 * (t1["1.running_mean"] - t0["1.running_mean"]),
    )


def test_compiled_evaluation_gives_the_same_curve() -> None:
    """--compile changes speed only: the same curve as the eager passes (pooled BN, so the
    evaluation pass is separate from the BN pass and goes through the compiled module)."""
    adapter, module, t0, t1, data = _pair({"hidden": "8", "bn": True}, dtype=torch.float32)
    bn = BNSpec(batch_size=64)
    eager = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(bn=bn, gauss=False)).run(
        alpha_grid(4)
    )
    spec = EvalSpec(bn=bn, gauss=False, compile=True, batch_size=100)
    compiled = PathEvaluator(adapter, module, t0, t1, data, spec)
    assert compiled.forward is not module
    curve = compiled.run(alpha_grid(4))
    np.testing.assert_allclose(curve.loss, eager.loss, rtol=1e-5)
    np.testing.assert_allclose(curve.accuracy, eager.accuracy)


def test_each_torchrun_rank_gets_its_own_gpu() -> None:
    from mliscan.evaluate import rank_device

    assert rank_device("cuda", 3, cuda=True) == "cuda:3"
    assert rank_device("auto", 1, cuda=True) == "cuda:1"
    assert rank_device("cuda:0", 2, cuda=True) == "cuda:0"  # an explicit index is the user's
    assert rank_device("auto", 2, cuda=False) == "auto"
    assert rank_device("cpu", 2, cuda=True) == "cpu"
