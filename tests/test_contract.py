"""The fast paths' contract (mliscan.contract) and their run-time check against the module's
own forward (PathEvaluator.check_fast_paths). References are the modules' own calls and
torch.func written here, never mliscan's engine."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

from mliscan import batchnorm, contract, taylor
from mliscan.custom import ModuleAdapter
from mliscan.evaluate import PathEvaluator, PreparedData
from mliscan.spec import EvalSpec


class Scaled(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class Leaky(nn.ReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(x, 0.1)


def _plain() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _hooked() -> nn.Sequential:
    net = _plain()
    net.register_forward_hook(lambda _m, _a, out: out * 3)
    return net


def _pre_hooked() -> nn.Sequential:
    net = _plain()
    net[2].register_forward_pre_hook(lambda _m, args: (args[0] + 1,))
    return net


def _parametrized() -> nn.Sequential:
    net = _plain()
    torch.nn.utils.parametrizations.weight_norm(net[0])
    return net


def _old_weight_norm() -> nn.Sequential:
    net = _plain()
    torch.nn.utils.weight_norm(net[0])
    return net


NOT_PLAIN = {
    "subclass of Sequential": lambda: Scaled(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)),
    "subclass of ReLU": lambda: nn.Sequential(nn.Linear(6, 5), Leaky(), nn.Linear(5, 3)),
    "forward hook": _hooked,
    "pre-hook on a child": _pre_hooked,
    "parametrization": _parametrized,
    "old-style weight_norm": _old_weight_norm,
    "Flatten(start_dim=0)": lambda: nn.Sequential(nn.Flatten(0), nn.Linear(18, 3)),
}


@pytest.mark.parametrize("case", sorted(NOT_PLAIN))
def test_no_fast_path_where_it_is_not_the_modules_own_call(case: str) -> None:
    net = NOT_PLAIN[case]()
    delta = {k: torch.ones_like(v) for k, v in net.state_dict().items()}
    assert not contract.lean_sequential(net)
    assert batchnorm.lean_forward(net) is None
    assert not taylor.supports(net, delta)


def test_a_global_hook_turns_every_fast_path_off() -> None:
    net = _plain()
    delta = {k: torch.ones_like(v) for k, v in net.state_dict().items()}
    assert contract.lean_sequential(net) and taylor.supports(net, delta)
    handle = nn.modules.module.register_module_forward_hook(lambda _m, _a, out: out)
    try:
        assert not contract.lean_sequential(net)
        assert not taylor.supports(net, delta)
    finally:
        handle.remove()
    assert contract.lean_sequential(net)


def _reused() -> nn.Sequential:
    """One ReLU instance twice, one Linear twice (a shared layer)."""
    relu, shared = nn.ReLU(), nn.Linear(5, 5)
    return nn.Sequential(nn.Linear(6, 5), relu, shared, nn.Tanh(), shared, relu, nn.Linear(5, 3))


def test_modules_reached_twice_are_walked_as_sequential_does() -> None:
    torch.manual_seed(0)
    net = _reused().double()
    x = torch.randn(7, 6, dtype=torch.float64)
    names = [n for n, _ in net.named_parameters()]  # the shared layer under its first name
    delta = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    assert "4.weight" not in names  # torch lists a shared parameter once
    assert contract.lean_sequential(net) and taylor.supports(net, delta)
    lean = batchnorm.lean_forward(net)
    with torch.no_grad():
        torch.testing.assert_close(lean(x), net(x))
    with torch.no_grad():
        z, z1, z2 = taylor.forward2(net, delta, x)
    weights = {n: p.detach() for n, p in net.named_parameters()}

    def f(w):
        return functional_call(net, w, (x,))

    def velocity(w):
        return jvp(f, (w,), (delta,))[1]

    ref1, ref2 = jvp(velocity, (weights,), (delta,))
    with torch.no_grad():
        torch.testing.assert_close(z, net(x))
    torch.testing.assert_close(z1, ref1)
    torch.testing.assert_close(z2, ref2)


def test_own_rule_must_sit_beside_the_forward() -> None:
    class Block(nn.Module):
        def forward(self, x):
            return x

        def taylor_forward(self, t, st):
            return st

    class Changed(Block):
        def forward(self, x):
            return 2 * x

    assert contract.own_rule(Block(), "taylor_forward")
    assert not contract.own_rule(Changed(), "taylor_forward")


def _evaluator(net: nn.Module, spec: EvalSpec) -> PathEvaluator:
    torch.manual_seed(1)
    theta0 = {k: v.clone() for k, v in net.state_dict().items()}
    theta1 = {
        k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v.clone()
        for k, v in net.state_dict().items()
    }
    x = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    return PathEvaluator(ModuleAdapter(net), net, theta0, theta1, PreparedData(x, y), spec)


def _own_losses(ev: PathEvaluator, alphas: list[float]) -> list[float]:
    """The loss by the module's own forward at each alpha (after the evaluator's BN pass)."""
    out = []
    for a in alphas:
        ev.set_alpha(a)
        with torch.no_grad():
            logits = ev.module(ev.data.inputs)
        out.append(float(nn.functional.cross_entropy(logits.double(), ev.data.targets)))
    return out


def test_a_wrong_lean_forward_is_caught_at_run_time(monkeypatch) -> None:
    """A shortcut that computed another function (here: deliberately off by 1) is refused
    at the first alpha: a warning, a note, and the module's own forward from there on."""
    real = batchnorm.lean_forward

    def wrong(module):
        fast = real(module)
        return None if fast is None else (lambda x: fast(x) + 1.0)

    monkeypatch.setattr(batchnorm, "lean_forward", wrong)
    ev = _evaluator(_plain(), EvalSpec(alphas=3, gauss=False))
    assert ev.forward_path == "lean-sequential"
    with pytest.warns(UserWarning, match="lean-sequential path disagrees"):
        curve = ev.run([0.0, 0.5, 1.0])
    assert curve.paths["loss"] == ["module"] * 3
    assert any(n.kind == "fast-path" and "lean-sequential" in n.text for n in curve.notes)
    assert curve.loss == pytest.approx(_own_losses(ev, [0.0, 0.5, 1.0]), rel=1e-5)


def test_a_wrong_second_order_pass_is_caught_at_run_time(monkeypatch) -> None:
    real = taylor.forward2

    def wrong(*args, **kwargs):
        z, z1, z2 = real(*args, **kwargs)
        return z * 1.01, z1, z2

    monkeypatch.setattr(taylor, "forward2", wrong)
    ev = _evaluator(_plain(), EvalSpec(alphas=3, gauss=True))
    assert ev.fast_gauss
    with pytest.warns(UserWarning, match="second-order path disagrees"):
        curve = ev.run([0.0, 0.5, 1.0])
    assert curve.paths["loss"] == ["lean-sequential"] * 3
    assert curve.paths["gauss"] == ["jvp"] * 3
    assert curve.loss == pytest.approx(_own_losses(ev, [0.0, 0.5, 1.0]), rel=1e-5)


def test_a_wrong_bn_pass_reuse_is_caught_at_run_time(monkeypatch) -> None:
    """A BN module called twice: the structural proof refuses the reuse; with the proof
    forced (as a bug would), the run-time check still refuses it."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 6)
            self.bn = nn.BatchNorm1d(6)
            self.out = nn.Linear(6, 3)

        def forward(self, x):
            return self.out(self.bn(self.lin(self.bn(x))))

    torch.manual_seed(0)
    net = Twice()
    ev = _evaluator(copy.deepcopy(net), EvalSpec(alphas=3, gauss=False))
    curve = ev.run([0.0, 0.5, 1.0])
    assert curve.paths["loss"] == ["module"] * 3
    own = _own_losses(ev, [0.0, 0.5, 1.0])
    assert curve.loss == pytest.approx(own, rel=1e-5)

    monkeypatch.setattr(contract, "bn_pass_is_evaluation", lambda *_: True)
    ev = _evaluator(copy.deepcopy(net), EvalSpec(alphas=3, gauss=False))
    with pytest.warns(UserWarning, match="bn-pass path disagrees"):
        curve = ev.run([0.0, 0.5, 1.0])
    assert curve.loss == pytest.approx(own, rel=1e-5)


def test_the_check_is_silent_where_the_fast_paths_hold() -> None:
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    ev = _evaluator(net, EvalSpec(alphas=3, gauss=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curve = ev.run([0.0, 0.5, 1.0])
    assert curve.paths["loss"] == ["second-order"] * 3
    assert curve.notes == []


def test_a_wrong_vmapped_pass_is_caught_at_run_time(monkeypatch) -> None:
    """--alpha-chunk: the vmapped pass's first chunk is compared with the module's own
    forward; a pass that computed another function is dropped for the per-alpha loop."""
    from mliscan import strategies

    ev = _evaluator(_plain(), EvalSpec(alphas=4, gauss=False, alpha_chunk=4))
    alphas = [0.0, 1 / 3, 2 / 3, 1.0]
    assert ev.can_vmap
    curve = ev.run(alphas)
    assert curve.paths["loss"] == ["vmapped"] * 4 and not curve.notes
    own = _own_losses(ev, alphas)
    assert curve.loss == pytest.approx(own, rel=1e-5)
    real = strategies.functional_call

    def wrong(module, weights, args):
        return real(module, weights, args) * 1.5

    monkeypatch.setattr(strategies, "functional_call", wrong)
    with pytest.warns(UserWarning, match="vmapped path disagrees"):
        curve = ev.run(alphas)
    assert curve.paths["loss"][0] != "vmapped"
    assert curve.loss == pytest.approx(own, rel=1e-5)
