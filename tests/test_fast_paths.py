"""Fast paths give the same curves as the simple path, for every built-in adapter.

The simple path rebuilds the module and loads theta(alpha) with load_state_dict at each
alpha, re-estimates batch norm through the generic (hooked, batched) pass, evaluates in
fixed batches, and differentiates with nested jvp.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mliscan import batchnorm, registry
from mliscan.adapter import DataInfo
from mliscan.evaluate import PathEvaluator, alpha_grid, prepare_data
from mliscan.spec import BNSpec, EvalSpec

CASES = [
    ("mlp", {"hidden": "16,16"}),
    ("mlp", {"hidden": "16,16", "bn": True, "activation": "tanh"}),
    ("mlp", {"hidden": "16", "activation": "gelu"}),
    ("resnet20", {}),
    # the deeper CIFAR ResNets repeat resnet20's blocks: run by CI (-m slow), not by make test
    *[(f"resnet{d}", {}, pytest.mark.slow) for d in (32, 44, 56)],
    ("resnet20", {"bn": False, "init": "fixup"}),
    ("resnet20", {"bn": False, "init": "block-identity"}),
    ("autoencoder", {"encoder": "16,8", "bn": True}),
    ("simplecnn", {}),
    ("simplecnn", {"bn": True}),
    ("lenet5", {}),
    ("lstm-lm", {"emb": 8, "hidden": 8, "layers": 2}),
    ("transformer-lm", {"dim": 8, "heads": 2, "ff": 16, "layers": 2, "context": 16}),
]
LMS = ("lstm-lm", "transformer-lm")
SHAPES = {"mlp": (1, 8, 8), "autoencoder": (1, 8, 8), "simplecnn": (1, 8, 8), "lenet5": (1, 16, 16)}
ALPHAS = alpha_grid(5)


def _endpoints(name: str, options: dict):
    adapter = registry.get_adapter(name)
    opts = adapter.parse_options(options)
    info = adapter.example()[1] if name in LMS else DataInfo(SHAPES.get(name, (3, 8, 8)), 10)
    torch.manual_seed(0)
    t0 = {k: v.clone() for k, v in adapter.build(opts, info).state_dict().items()}
    torch.manual_seed(1)
    other = adapter.build(opts, info).state_dict()
    g = torch.Generator().manual_seed(5)
    t1 = {
        k: (v + 0.3 * other[k] + 0.05 * torch.randn(v.shape, generator=g))
        if v.is_floating_point() and "running" not in k
        else v.clone()
        for k, v in t0.items()
    }
    n = 12 if name.startswith("resnet") else 37
    x = torch.randn(n, *info.input_shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    if name in LMS:
        torch.manual_seed(5)
        x, y = adapter.example_batch(info, n)
    return adapter, opts, info, t0, t1, x, y


def _simple_losses(adapter, opts, info, t0, t1, x, y, bn: BNSpec) -> np.ndarray:
    out = []
    for alpha in ALPHAS:
        m = adapter.build(opts, info)
        state = {
            k: (t0[k] + alpha * (t1[k] - t0[k])) if t0[k].is_floating_point() else t0[k] for k in t0
        }
        if alpha == 1.0:
            state = t1
        m.load_state_dict(state)
        xs = adapter.prepare_inputs(x)
        ys = adapter.prepare_targets(xs, y)
        layers = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
        batchnorm.reestimate(m, layers, xs, bn, forward=lambda b, m=m: m(b))
        m.eval()
        with torch.no_grad():
            total = sum(
                float(adapter.loss(m(xs[i : i + 8]), ys[i : i + 8]).double().sum())
                for i in range(0, len(xs), 8)
            )
        out.append(total / len(xs))
    return np.asarray(out)


PARAMS = [pytest.param(*case[:2], id=f"{case[0]}-{case[1]}", marks=case[2:]) for case in CASES]


@pytest.mark.parametrize(("name", "options"), PARAMS)
def test_fast_paths_match_simple_path(name: str, options: dict) -> None:
    adapter, opts, info, t0, t1, x, y = _endpoints(name, options)
    bn = BNSpec(batch_size=5)
    simple = _simple_losses(adapter, opts, info, t0, t1, x, y, bn)
    module = adapter.build(opts, info)
    data = prepare_data(adapter, x, y, torch.device("cpu"), torch.float32)
    fast = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(bn=bn, gauss=True))
    curve = fast.run(ALPHAS)
    np.testing.assert_allclose(curve.loss, simple, rtol=1e-5)
    if name.startswith("resnet") or name == "mlp":  # residual blocks have second-order rules
        assert fast.fast_gauss
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        _check_full_data_statistics(adapter, opts, info, t0, t1, x, y, module, data)
    if name in ("resnet32", "resnet44", "resnet56"):
        return  # same blocks as resnet20: the nested-jvp comparison below is slow on CPU
    # the Gauss integrand of the default path (second-order pass or jvp) equals nested jvp
    ref = PathEvaluator(
        adapter, module, t0, t1, data, EvalSpec(bn=bn, gauss_method="jvp", batch_size=8)
    )
    ref_curve = ref.run(ALPHAS)
    np.testing.assert_allclose(curve.gauss_integrand, ref_curve.gauss_integrand, rtol=1e-4)
    np.testing.assert_allclose(ref_curve.loss, simple, rtol=1e-5)
    if fast.can_vmap:  # several alphas per pass
        chunked = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(alpha_chunk=3, gauss=False))
        np.testing.assert_allclose(chunked.run(ALPHAS).loss, simple, rtol=1e-5)


def _check_full_data_statistics(adapter, opts, info, t0, t1, x, y, module, data) -> None:
    """The default BN statistics (the whole data as one batch): the pass that doubles as the
    evaluation, and the chunked computation for data too large to hold, both equal the
    simple path (full-batch hooked pass, then evaluation in batches of 8)."""
    full = BNSpec()
    simple = _simple_losses(adapter, opts, info, t0, t1, x, y, full)
    merged = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(bn=full, gauss=False))
    assert merged.bn_chunk is None
    np.testing.assert_allclose(merged.run(ALPHAS).loss, simple, rtol=1e-5)
    chunked = PathEvaluator(
        adapter, module, t0, t1, data, EvalSpec(bn=full, gauss=False, batch_size=5)
    )
    chunked.bn.chunk = 5  # as when the full batch does not fit
    assert chunked.bn_chunk == 5
    np.testing.assert_allclose(chunked.run(ALPHAS).loss, simple, rtol=1e-5)
    # several alphas per vmapped pass, each normalising the whole data by its own statistics
    vmapped = PathEvaluator(
        adapter, module, t0, t1, data, EvalSpec(bn=full, gauss=False, alpha_chunk=3)
    )
    assert vmapped.can_vmap
    curve = vmapped.run(ALPHAS)
    np.testing.assert_allclose(curve.loss, simple, rtol=1e-5)
    if curve.accuracy is not None:
        np.testing.assert_allclose(curve.accuracy, merged.run(ALPHAS).accuracy)
