"""Second-order forward rules (mliscan.taylor): every rule against nested forward-mode AD of
ops torch differentiates correctly, and the language models' passes against nested jvp."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp
from torch.nn import functional as F

from mliscan.adapter import DataInfo
from mliscan.evaluate import PathEvaluator, prepare_data
from mliscan.registry import get_adapter
from mliscan.spec import EvalSpec
from mliscan.taylor import JetRules as J

DT = torch.float64


def _composite_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer norm written out in ops whose forward derivatives are right at every order."""
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    out = centred * torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _nested(f, xs, ds):
    """(f, f', f'') along x + a d at a = 0, by nested torch.func.jvp."""
    one = torch.tensor(1.0, dtype=DT)

    def g(a):
        return f(*[x + a * d for x, d in zip(xs, ds, strict=True)])

    a0 = torch.tensor(0.0, dtype=DT)
    z, d1 = jvp(g, (a0,), (one,))
    _, d2 = jvp(lambda a: jvp(g, (a,), (one,))[1], (a0,), (one,))
    return z, d1, d2


def _rms(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w


_FUTURE = torch.ones(5, 5, dtype=torch.bool).triu(1)


def _attention(q, k, v):
    scores = (q * 0.7) @ k.transpose(-1, -2)
    return torch.softmax(scores.masked_fill(_FUTURE, float("-inf")), -1) @ v


RULES = {
    "attention": (
        _attention,
        lambda q, k, v: J.attention(q, k, v, 0.7, _FUTURE),
        [(2, 3, 5, 4)] * 3,
    ),
    "softmax": (lambda x: torch.softmax(x, -1), lambda x: J.softmax(x, -1), [(3, 5)]),
    "layer_norm": (
        lambda x, w, b: _composite_layer_norm(x, (5,), w, b, 1e-5),
        lambda x, w, b: J.layer_norm(x, (5,), w, b, 1e-5),
        [(3, 5), (5,), (5,)],
    ),
    "rms_norm": (_rms, lambda x, w: J.layer_norm(x, (5,), w, None, 1e-6, rms=True), [(3, 5), (5,)]),
    "matmul": (torch.matmul, J.matmul, [(2, 3, 4), (2, 4, 5)]),
    "mul": (torch.mul, J.mul, [(4,), (4,)]),
    "sigmoid": (torch.sigmoid, J.sigmoid, [(6,)]),
    "tanh": (torch.tanh, J.tanh, [(6,)]),
    "gelu": (F.gelu, J.gelu, [(6,)]),
    "gelu-tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda x: J.gelu(x, "tanh"), [(6,)]),
    "silu": (F.silu, J.silu, [(6,)]),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_equals_nested_forward_ad(name: str) -> None:
    f, rule, shapes = RULES[name]
    torch.manual_seed(0)
    xs = [torch.randn(s, dtype=DT) for s in shapes]
    ds = [torch.randn(s, dtype=DT) for s in shapes]
    expected = _nested(f, xs, ds)
    got = rule(*[(x, d, None) for x, d in zip(xs, ds, strict=True)])
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_a_causal_mask_keeps_masked_entries_at_zero() -> None:
    scores = torch.randn(4, 4, dtype=DT)
    future = torch.ones(4, 4, dtype=torch.bool).triu(1)
    s, s1, s2 = J.softmax(
        (
            scores.masked_fill(future, float("-inf")),
            torch.randn(4, 4, dtype=DT).masked_fill(future, 0.0),
            torch.randn(4, 4, dtype=DT).masked_fill(future, 0.0),
        )
    )
    for t in (s, s1, s2):
        assert torch.isfinite(t).all() and (t[future] == 0).all()


LMS = [
    ("lstm-lm", {"emb": 12, "hidden": 12, "layers": 2}),
    ("lstm-lm", {"emb": 12, "hidden": 12, "layers": 1, "tied": True}),
    ("transformer-lm", {"dim": 12, "heads": 2, "ff": 24, "layers": 2, "context": 16}),
    # one block: the last block (Tracer.tail, at the Gauss positions) is the first
    ("transformer-lm", {"dim": 12, "heads": 2, "ff": 24, "layers": 1, "context": 16}),
]


@pytest.mark.parametrize(
    ("name", "options"), LMS, ids=["lstm", "lstm-tied", "transformer", "transformer-1"]
)
def test_language_models_have_the_second_order_pass_equal_to_nested_jvp(name, options) -> None:
    adapter = get_adapter(name)
    opts = adapter.parse_options(options)
    info = DataInfo((10,), 40)
    torch.manual_seed(0)
    module = adapter.build(opts, info).eval().double()
    t0 = {k: v.double().clone() for k, v in module.state_dict().items()}
    torch.manual_seed(1)
    t1 = {k: v.double() + 0.3 * torch.randn_like(v.double()) for k, v in t0.items()}
    x, y = adapter.example_batch(info, 7)
    data = prepare_data(adapter, x, y, torch.device("cpu"), DT)
    values = {}
    for method in ("auto", "jvp"):
        spec = EvalSpec(gauss_method=method, dtype="float64", batch_size=4)
        ev = PathEvaluator(adapter, module, t0, t1, data, spec)
        assert ev.fast_gauss == (method == "auto")
        values[method] = ev.run([0.0, 0.4, 1.0]).gauss_integrand
    torch.testing.assert_close(
        torch.as_tensor(values["auto"]), torch.as_tensor(values["jvp"]), rtol=1e-10, atol=0
    )
