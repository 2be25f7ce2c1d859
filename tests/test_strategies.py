"""The evaluation strategies agree with each other and with a plain forward pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mliscan.adapter import DataInfo
from mliscan.evaluate import PathEvaluator, prepare_data
from mliscan.registry import get_adapter
from mliscan.spec import EvalSpec
from mliscan.strategies import Totals


def _setup(bn: bool = False, **spec):
    adapter = get_adapter("mlp")
    opts = adapter.parse_options({"hidden": "16", "activation": "tanh", "bn": bn})
    torch.manual_seed(0)
    module = adapter.build(opts, DataInfo((1, 8, 8), 10))
    t0 = {k: v.clone() for k, v in module.state_dict().items()}
    torch.manual_seed(1)
    t1 = {
        k: (
            adapter.build(opts, DataInfo((1, 8, 8), 10)).state_dict()[k]
            if v.is_floating_point()
            else v
        )
        for k, v in t0.items()
    }
    x, y = torch.randn(120, 1, 8, 8), torch.randint(0, 10, (120,))
    data = prepare_data(adapter, x, y, torch.device("cpu"), torch.float64)
    module = module.double()
    t0 = {k: v.double() if v.is_floating_point() else v for k, v in t0.items()}
    t1 = {k: v.double() if v.is_floating_point() else v for k, v in t1.items()}
    return adapter, module, t0, t1, data, EvalSpec(dtype="float64", batch_size=32, **spec)


def test_totals_is_the_mean_loss_and_accuracy():
    adapter = get_adapter("mlp")
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0])
    t = Totals(adapter, torch.device("cpu"))
    t.add(out[:2], y[:2])
    t.add(out[2:], y[2:])
    loss, acc = t.means(3)
    ref = nn.functional.cross_entropy(out, y).item()
    assert abs(loss[0] - ref) < 1e-12 and abs(acc[0] - 2 / 3) < 1e-12


def test_per_alpha_equals_plain_forward():
    adapter, module, t0, t1, data, spec = _setup()
    ev = PathEvaluator(adapter, module, t0, t1, data, spec)
    ev.set_alpha(0.3)
    loss, _ = ev.per_alpha.loss_and_accuracy()
    with torch.no_grad():
        ref = nn.functional.cross_entropy(module(data.inputs), data.targets).item()
    assert abs(loss - ref) < 1e-12


def test_fused_second_order_equals_per_alpha_and_nested_jvp():
    for bn in (False, True):
        adapter, module, t0, t1, data, spec = _setup(bn=bn)
        ev = PathEvaluator(adapter, module, t0, t1, data, spec)
        assert ev.fast_gauss
        ev.set_alpha(0.6)
        loss_f, acc_f, g_f = ev.fused.evaluate()
        ev.set_alpha(0.6)
        loss_p, acc_p = ev.per_alpha.loss_and_accuracy()
        jvp = PathEvaluator(
            adapter, module, t0, t1, data, EvalSpec(**{**spec.__dict__, "gauss_method": "jvp"})
        )
        jvp.set_alpha(0.6)
        g_j = jvp.per_alpha.gauss_integrand()
        assert abs(loss_f - loss_p) < 1e-10 and acc_f == acc_p
        np.testing.assert_allclose(g_f, g_j, rtol=1e-8)


def test_vmapped_chunks_equal_the_per_alpha_loop():
    adapter, module, t0, t1, data, spec = _setup()
    ev = PathEvaluator(adapter, module, t0, t1, data, spec)
    losses, accs = ev.vmapped.evaluate([0.0, 0.5, 1.0])
    for j, a in enumerate([0.0, 0.5, 1.0]):
        ev.set_alpha(a)
        loss, acc = ev.per_alpha.loss_and_accuracy()
        assert abs(losses[j] - loss) < 1e-10 and abs(accs[j] - acc) < 1e-12


def test_nested_jvp_through_layer_norm_is_corrected() -> None:
    """torch's layer_norm drops second-order terms under nested forward AD
    (pytorch/pytorch#196700); the derivative pass replaces it by its composition. Reference:
    central finite differences in float64."""
    from torch.func import jvp
    from torch.nn import functional as F

    from mliscan.exactad import ExactForwardAD

    torch.manual_seed(0)
    x, d = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    w, dw = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)

    def f(a):
        return F.layer_norm(x + a * d, (5,), w + a * dw, None, 1e-5)

    one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)

    def second() -> torch.Tensor:
        return jvp(lambda a: jvp(f, (a,), (one,))[1], (zero,), (one,))[1]

    h = 1e-4
    reference = (f(h) - 2 * f(0.0) + f(-h)) / h**2
    # (torch 2.14's own rule is off by about 100 % here)
    with ExactForwardAD():
        torch.testing.assert_close(second(), reference, rtol=1e-5, atol=1e-5)
    assert F.layer_norm is not None and F.layer_norm.__name__ == "layer_norm"  # restored
