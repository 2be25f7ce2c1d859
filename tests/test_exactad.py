"""mliscan.exactad against finite differences, independently of the engine.

* a scan over the ops models commonly use: ``second_order`` (nested jvp under
  ``ExactForwardAD``) matches central differences in float64 for z' and z'';
* torch's own rules for each entry of ``REPLACED`` are re-measured without the mode, so a
  torch release that fixes or breaks one is noticed;
* the mode changes no global state; the reverse and finite-difference fallbacks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call, jvp
from torch.nn import functional as F

from mliscan import exactad
from mliscan.exactad import REPLACED, ExactForwardAD, second_order

DT = torch.float64
RTOL = 1e-6  # z' and z'' against central differences, relative to the derivatives' size

Weights = dict[str, Tensor]
Fn = Callable[[Weights], Tensor]
Case = tuple[Fn, Weights]


def differences(fn: Fn, primals: Weights, tangents: Weights, h: float = 1e-3):
    """(z', z'') by the five-point central stencils (error O(h^4)) in float64."""

    def at(a: float) -> Tensor:
        return fn({k: v + a * tangents[k] for k, v in primals.items()}).double()

    with torch.no_grad():
        f2, f1, f0, g1, g2 = at(2 * h), at(h), at(0.0), at(-h), at(-2 * h)
    first = (-f2 + 8 * f1 - 8 * g1 + g2) / (12 * h)
    second = (-f2 + 16 * f1 - 30 * f0 + 16 * g1 - g2) / (12 * h * h)
    return first, second


def raw_nested_jvp(fn: Fn, primals: Weights, tangents: Weights) -> tuple[Tensor, Tensor]:
    """torch's own nested jvp, without the mode."""

    def velocity(weights: Weights) -> Tensor:
        return jvp(fn, (weights,), (tangents,))[1]

    return jvp(velocity, (primals,), (tangents,))


def errors(got: tuple[Tensor, Tensor], want: tuple[Tensor, Tensor]) -> tuple[float, float]:
    """max |got - want| of z' and z'', each relative to the larger of its own size and a
    tenth of the other's (z'' of a linear op is 0)."""
    size = [float(w.abs().max()) if w.numel() else 0.0 for w in want]
    out = []
    for k in range(2):
        scale = max(size[k], 0.1 * size[1 - k], 1e-12)
        diff = float((got[k].double() - want[k]).abs().max()) if want[k].numel() else 0.0
        out.append(diff / scale)
    return out[0], out[1]


class Maker:
    """Random float64 tensors from a private generator (the global RNG is left alone)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.g, dtype=DT)

    def uniform(self, lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=self.g, dtype=DT)

    def away(self, *shape: int, scale: float = 1.0) -> Tensor:
        """Values with |x| in [0.3, 1.3] * scale: far from a kink at 0 for the differences."""
        sign = torch.randint(0, 2, shape, generator=self.g).to(DT) * 2 - 1
        return sign * self.uniform(0.3, 1.3, *shape) * scale

    def tangents(self, primals: Weights) -> Weights:
        return {k: 0.1 * self.randn(*v.shape) for k, v in primals.items()}


def module_case(module: nn.Module, *inputs: Tensor, pick: Callable = lambda o: o) -> Case:
    module = module.double()
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    return (lambda w: pick(functional_call(module, w, inputs))), params


def built(make: Callable[[], nn.Module]) -> nn.Module:
    """A module initialised from a fixed seed without touching the global RNG's state."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return make()


# --- the scan ----------------------------------------------------------------------------------

CASES: dict[str, Callable[[Maker], Case]] = {}


def case(name: str) -> Callable:
    def register(builder: Callable[[Maker], Case]) -> Callable[[Maker], Case]:
        CASES[name] = builder
        return builder

    return register


def pointwise(name: str, op: Callable[[Tensor], Tensor], sample: str = "randn") -> None:
    """y = op(x @ w): an elementwise op after a linear map, x and w both moving."""

    def builder(m: Maker) -> Case:
        if sample == "away":  # inputs of the op itself kept off its kinks
            pre = m.away(4, 6, scale=2.0)
        elif sample == "hard":  # off the kinks at +-3 and 0 of hardsigmoid / hardswish
            pre = m.away(4, 6, scale=2.0).clamp(-2.6, 2.6)
        else:
            pre = m.randn(4, 6)
        w = torch.eye(6, dtype=DT) + 0.1 * m.randn(6, 6)
        x = torch.linalg.solve(w.T, pre.T).T  # so that x @ w = pre exactly
        return (lambda p: op(p["x"] @ p["w"])), {"x": x, "w": w}

    CASES[name] = builder


for _name, _op, _sample in [
    ("relu", F.relu, "away"),
    ("gelu", F.gelu, "randn"),
    ("gelu-tanh", lambda x: F.gelu(x, approximate="tanh"), "randn"),
    ("silu", F.silu, "randn"),
    ("tanh", torch.tanh, "randn"),
    ("sigmoid", torch.sigmoid, "randn"),
    ("softplus", F.softplus, "randn"),
    ("elu", F.elu, "away"),
    ("selu", F.selu, "away"),
    ("celu", F.celu, "away"),
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.1), "away"),
    ("hardsigmoid", F.hardsigmoid, "hard"),
    ("hardsigmoid-module", nn.Hardsigmoid(), "hard"),
    ("hardswish", F.hardswish, "hard"),
    ("hardtanh", lambda x: F.hardtanh(x, -3.0, 3.0), "hard"),
    ("relu6", F.relu6, "away"),
    ("mish", F.mish, "randn"),
    ("logsigmoid", F.logsigmoid, "randn"),
    ("softsign", F.softsign, "randn"),
    ("softmax", lambda x: F.softmax(x, -1), "randn"),
    ("log_softmax", lambda x: F.log_softmax(x, -1), "randn"),
    ("glu", F.glu, "randn"),
    ("torch._C._nn.glu", lambda x: torch._C._nn.glu(x, 0), "randn"),
    ("torch._C._nn.hardsigmoid", torch._C._nn.hardsigmoid, "hard"),
    ("dropout-eval", lambda x: F.dropout(x, 0.5, training=False), "randn"),
    ("normalize", F.normalize, "randn"),
]:
    pointwise(_name, _op, _sample)


@case("linear")
def _(m: Maker) -> Case:
    return module_case(built(lambda: nn.Linear(5, 3)), m.randn(4, 5))


@case("conv1d")
def _(m: Maker) -> Case:
    return module_case(built(lambda: nn.Conv1d(2, 3, 3, padding=1)), m.randn(2, 2, 7))


@case("conv2d")
def _(m: Maker) -> Case:
    return module_case(built(lambda: nn.Conv2d(2, 3, 3, stride=2)), m.randn(2, 2, 7, 7))


@case("conv_transpose2d")
def _(m: Maker) -> Case:
    return module_case(built(lambda: nn.ConvTranspose2d(2, 3, 2)), m.randn(1, 2, 4, 4))


@case("embedding")
def _(m: Maker) -> Case:
    ids = torch.tensor([[1, 4, 4], [0, 2, 9]])
    return module_case(built(lambda: nn.Embedding(10, 4)), ids)


@case("max_pool2d+avg_pool2d+adaptive")
def _(m: Maker) -> Case:
    x = m.randn(2, 3, 8, 8)

    def fn(p: Weights) -> Tensor:
        y = F.max_pool2d(p["x"] * p["s"], 2)
        return F.adaptive_avg_pool2d(F.avg_pool2d(y, 2), 1) + F.adaptive_max_pool2d(y, 1)

    return fn, {"x": x, "s": m.uniform(0.5, 1.5, 3, 1, 1)}


@case("interpolate-bilinear+pixel_shuffle")
def _(m: Maker) -> Case:
    def fn(p: Weights) -> Tensor:
        y = F.interpolate(p["x"] * p["x"], scale_factor=2, mode="bilinear")
        return F.pixel_shuffle(y, 2)

    return fn, {"x": m.randn(1, 4, 3, 3)}


@case("local_response_norm")
def _(m: Maker) -> Case:
    return (lambda p: F.local_response_norm(p["x"], 3)), {"x": m.randn(2, 4, 3, 3)}


def norm_case(op: Callable[..., Tensor], x_shape: tuple, w_shape: tuple) -> Callable:
    def builder(m: Maker) -> Case:
        p = {"x": m.randn(*x_shape), "w": 1 + 0.3 * m.randn(*w_shape), "b": m.randn(*w_shape)}
        return (lambda q: op(q["x"], q["w"], q["b"])), p

    return builder


CASES["layer_norm"] = norm_case(lambda x, w, b: F.layer_norm(x, (6,), w, b), (3, 4, 6), (6,))
CASES["layer_norm-2d"] = norm_case(lambda x, w, b: F.layer_norm(x, (4, 6), w, b), (3, 4, 6), (4, 6))
CASES["torch.layer_norm"] = norm_case(
    lambda x, w, b: torch.layer_norm(x, [6], w, b, 1e-5), (3, 6), (6,)
)
CASES["torch.native_layer_norm"] = norm_case(
    lambda x, w, b: torch.native_layer_norm(x, [6], w, b, 1e-5)[0], (3, 6), (6,)
)
CASES["rms_norm"] = norm_case(lambda x, w, b: F.rms_norm(x, (6,), w, 1e-6) + b, (3, 6), (6,))
CASES["group_norm"] = norm_case(lambda x, w, b: F.group_norm(x, 2, w, b), (3, 4, 5), (4,))
CASES["instance_norm"] = norm_case(
    lambda x, w, b: F.instance_norm(x, weight=w, bias=b), (3, 4, 5), (4,)
)
CASES["torch.instance_norm"] = norm_case(
    lambda x, w, b: torch.instance_norm(x, w, b, None, None, True, 0.1, 1e-5, False),
    (3, 4, 5),
    (4,),
)
CASES["batch_norm-train"] = norm_case(
    lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (5, 4, 3), (4,)
)
CASES["batch_norm-train-2d"] = norm_case(
    lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (5, 4), (4,)
)
CASES["torch.batch_norm-train"] = norm_case(
    lambda x, w, b: torch.batch_norm(x, w, b, None, None, True, 0.1, 1e-5, False), (5, 4, 3), (4,)
)
_MEAN, _VAR = torch.linspace(-1, 1, 4, dtype=DT), torch.linspace(0.5, 2, 4, dtype=DT)
CASES["batch_norm-eval"] = norm_case(
    lambda x, w, b: F.batch_norm(x, _MEAN, _VAR, w, b, training=False), (5, 4, 3), (4,)
)
CASES["batch_norm-train-running-stats"] = norm_case(
    lambda x, w, b: F.batch_norm(x, _MEAN.clone(), _VAR.clone(), w, b, training=True),
    (5, 4, 3),
    (4,),
)


@case("batch_norm-eval-moving-stats")
def _(m: Maker) -> Case:
    p = {"x": m.randn(5, 4), "mean": m.randn(4), "var": m.uniform(0.5, 2, 4)}
    return (lambda q: F.batch_norm(q["x"], q["mean"], q["var"], training=False)), p


@case("BatchNorm2d-train-module")
def _(m: Maker) -> Case:
    bn = built(lambda: nn.BatchNorm2d(3, track_running_stats=False)).train()
    return module_case(bn, m.randn(4, 3, 2, 2))


@case("BatchNorm2d-train-module-tracking")  # num_batches_tracked += 1: functorch refuses
def _(m: Maker) -> Case:
    return module_case(built(lambda: nn.BatchNorm2d(3)).train(), m.randn(4, 3, 2, 2))


METHOD = {"BatchNorm2d-train-module-tracking": "reverse"}  # else "jvp"


@case("LayerNorm+GroupNorm+InstanceNorm-modules")
def _(m: Maker) -> Case:
    net = built(
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 1),
            nn.GroupNorm(2, 4),
            nn.InstanceNorm1d(4, affine=True),
            nn.LayerNorm(5),
        )
    )
    return module_case(net, m.randn(3, 2, 5))


@case("weight_norm-parametrization")
def _(m: Maker) -> Case:
    net = built(lambda: nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)))
    return module_case(net, m.randn(2, 4))


@case("weight_norm-parametrization-dim1")
def _(m: Maker) -> Case:
    net = built(lambda: nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 3, 2), dim=1))
    return module_case(net, m.randn(2, 2, 5))


@case("torch._weight_norm-whole")
def _(m: Maker) -> Case:
    p = {"v": m.randn(3, 4), "g": m.uniform(0.5, 2)}
    return (lambda q: torch._weight_norm(q["v"], q["g"], -1)), p


def attention_case(n_kv: int = 3, kv_len: int = 5, **kwargs) -> Callable:
    def builder(m: Maker) -> Case:
        p = {"q": m.randn(2, 3, 5, 4), "k": m.randn(2, n_kv, kv_len, 4)}
        p["v"] = m.randn(2, n_kv, kv_len, 4)
        if kwargs.get("attn_mask") == "float":
            p["mask"] = m.randn(5, kv_len)

        def fn(q: Weights) -> Tensor:
            options = dict(kwargs)
            if options.get("attn_mask") == "float":
                options["attn_mask"] = q["mask"]
            return F.scaled_dot_product_attention(q["q"], q["k"], q["v"], **options)

        return fn, p

    return builder


CASES["sdpa"] = attention_case()
CASES["sdpa-causal"] = attention_case(is_causal=True)
CASES["sdpa-causal-longer-keys"] = attention_case(kv_len=7, is_causal=True)
CASES["sdpa-bool-mask-scale"] = attention_case(
    attn_mask=torch.tensor([[True] * 3 + [False] * 2] * 4 + [[False] * 5]), scale=0.3
)
CASES["sdpa-float-mask"] = attention_case(attn_mask="float")
CASES["sdpa-gqa"] = attention_case(n_kv=1, enable_gqa=True)


@case("MultiheadAttention-need_weights=False")
def _(m: Maker) -> Case:
    x = m.randn(2, 5, 4)
    mha = built(lambda: nn.MultiheadAttention(4, 2, batch_first=True))
    mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=DT)
    return module_case(mha, x, x, x, None, False, mask, pick=lambda o: o[0])


@case("TransformerEncoderLayer-eval")
def _(m: Maker) -> Case:
    layer = built(lambda: nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True))
    return module_case(layer.eval(), m.randn(2, 5, 4))


class Recurrent(nn.Module):
    """An LSTM feeding a GRU: torch's recurrent kernels under nested jvp."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.gru = nn.LSTM(3, 4), nn.GRU(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.gru(self.lstm(x)[0])[0]


CASES["LSTM+GRU"] = lambda m: module_case(built(Recurrent), m.randn(5, 2, 3))


def bag_case(**kwargs) -> Callable:
    def builder(m: Maker) -> Case:
        p = {"w": m.randn(10, 4)}
        if kwargs.pop("weighted", False):
            p["s"] = m.uniform(0.5, 1.5, 6)
        ids = kwargs.get("input", torch.tensor([1, 3, 3, 7, 2, 9]))
        options = {k: v for k, v in kwargs.items() if k != "input"}

        def fn(q: Weights) -> Tensor:
            extra = {"per_sample_weights": q["s"]} if "s" in q else {}
            return F.embedding_bag(ids, q["w"] ** 2, **options, **extra)

        return fn, p

    return builder


CASES["embedding_bag-2d-mean"] = bag_case(input=torch.tensor([[1, 3, 3], [7, 2, 9]]))
CASES["embedding_bag-offsets-sum-weighted"] = bag_case(
    offsets=torch.tensor([0, 2, 2]), mode="sum", weighted=True
)
CASES["embedding_bag-offsets-max-last-offset"] = bag_case(
    offsets=torch.tensor([0, 2, 5]), mode="max", include_last_offset=True
)
CASES["embedding_bag-offsets-mean-padding"] = bag_case(
    offsets=torch.tensor([0, 1, 4]), padding_idx=3
)
CASES["EmbeddingBag-module"] = lambda m: module_case(
    built(lambda: nn.EmbeddingBag(10, 3, mode="sum")), torch.tensor([[1, 2], [4, 4]])
)


@case("cdist")
def _(m: Maker) -> Case:
    return (lambda p: torch.cdist(p["x"], p["y"])), {"x": m.randn(2, 4, 3), "y": m.randn(2, 3, 3)}


@case("cdist-p3")
def _(m: Maker) -> Case:
    return (lambda p: torch.cdist(p["x"], p["y"], p=3)), {"x": m.randn(4, 3), "y": m.randn(2, 3)}


@case("pdist")
def _(m: Maker) -> Case:
    return (lambda p: F.pdist(p["x"])), {"x": m.randn(5, 3)}


def matrix_case(op: Callable[[Tensor], Tensor], spd: bool = False) -> Callable:
    def builder(m: Maker) -> Case:
        a = m.randn(2, 3, 3) + 3 * torch.eye(3, dtype=DT)
        if spd:
            a = a @ a.mT
        return (lambda p: op(p["a"])), {"a": a}

    return builder


CASES["linalg.det"] = matrix_case(torch.linalg.det)
CASES["torch.det"] = matrix_case(torch.det)
CASES["Tensor.det"] = matrix_case(lambda a: a.det())
CASES["linalg.slogdet"] = matrix_case(lambda a: torch.linalg.slogdet(a).logabsdet)
CASES["torch.slogdet"] = matrix_case(lambda a: torch.slogdet(a)[1] * torch.slogdet(a)[0])
CASES["Tensor.slogdet"] = matrix_case(lambda a: a.slogdet().logabsdet)
CASES["torch.logdet"] = matrix_case(torch.logdet, spd=True)
CASES["Tensor.logdet"] = matrix_case(lambda a: a.logdet(), spd=True)
CASES["linalg.inv"] = matrix_case(torch.linalg.inv)


@case("linalg.solve")
def _(m: Maker) -> Case:
    p = {"a": m.randn(2, 3, 3) + 3 * torch.eye(3, dtype=DT), "b": m.randn(3)}
    p["c"], p["d"], p["e"] = m.randn(2, 3), m.randn(3, 2), m.randn(4, 3)

    def fn(q: Weights) -> Tensor:
        a = q["a"]
        vector = torch.linalg.solve(a, q["b"])  # one right-hand side for both matrices
        batch = torch.linalg.solve(a, q["c"])  # one vector per matrix
        matrix = torch.linalg.solve(a, q["d"]).flatten(-2)
        right = torch.linalg.solve(a, q["e"], left=False).flatten(-2)  # X A = B
        return torch.cat([vector, batch, matrix, right], -1)

    return fn, p


@pytest.mark.parametrize("name", sorted(CASES))
def test_second_order_matches_finite_differences(name: str) -> None:
    m = Maker(sum(map(ord, name)))
    fn, primals = CASES[name](m)
    tangents = m.tangents(primals)
    want = differences(fn, primals, tangents)
    velocity, acceleration, method = second_order(fn, primals, tangents)
    expected = METHOD.get(name, "jvp")
    assert method == expected, f"{name}: {expected} expected, {method} used"
    assert velocity.shape == acceleration.shape == want[0].shape
    e1, e2 = errors((velocity, acceleration), want)
    assert e1 < RTOL and e2 < RTOL, (
        f"{name}: z' off by {e1:.1e}, z'' off by {e2:.1e} (relative) against finite "
        "differences; if torch's own rule for an op here broke, add it to exactad.REPLACED"
    )
    # The replacements compute the same function as torch's ops (with and without a derivative).
    with torch.no_grad():
        native = fn(primals)
        with ExactForwardAD():
            plain = fn(primals)
            moving = fn({k: v.clone().requires_grad_() for k, v in primals.items()})
    torch.testing.assert_close(moving.detach(), native, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain, native, rtol=1e-12, atol=1e-12)


# --- torch's own rules, re-measured ------------------------------------------------------------

PROBES: dict[str, str] = {  # entry of REPLACED -> a case of the scan that goes through it
    "torch.nn.functional.layer_norm": "layer_norm",
    "torch.layer_norm": "torch.layer_norm",
    "torch.native_layer_norm": "torch.native_layer_norm",
    "torch.nn.functional.batch_norm": "batch_norm-train",
    "torch.batch_norm": "torch.batch_norm-train",
    "torch.nn.functional.instance_norm": "instance_norm",
    "torch.instance_norm": "torch.instance_norm",
    "torch._weight_norm": "weight_norm-parametrization",
    "torch.nn.functional.scaled_dot_product_attention": "sdpa",
    "torch.nn.functional.multi_head_attention_forward": "MultiheadAttention-need_weights=False",
    "torch.nn.functional.hardsigmoid": "hardsigmoid",
    "torch._C._nn.hardsigmoid": "torch._C._nn.hardsigmoid",
    "torch.nn.functional.glu": "glu",
    "torch._C._nn.glu": "torch._C._nn.glu",
    "torch.nn.functional.embedding_bag": "embedding_bag-offsets-sum-weighted",
    "torch.cdist": "cdist",
    "torch.pdist": "pdist",
    "torch.linalg.det": "linalg.det",
    "torch.det": "torch.det",
    "torch.Tensor.det": "Tensor.det",
    "torch.linalg.slogdet": "linalg.slogdet",
    "torch.slogdet": "torch.slogdet",
    "torch.Tensor.slogdet": "Tensor.slogdet",
    "torch.logdet": "torch.logdet",
    "torch.Tensor.logdet": "Tensor.logdet",
    "torch.linalg.solve": "linalg.solve",
}


def test_every_replaced_op_has_a_probe() -> None:
    assert set(PROBES) == set(REPLACED), "add a probe (a scan case through the op) for each entry"
    assert set(exactad._RULE_NAMES) == set(REPLACED)
    assert all(exactad._resolve(name) is not None for name in REPLACED)


@pytest.mark.parametrize("name", sorted(REPLACED))
def test_torch_rules_are_still_wrong_or_missing(name: str) -> None:
    """What REPLACED says of torch's own rule still holds (else update REPLACED)."""
    m = Maker(sum(map(ord, PROBES[name])))
    fn, primals = CASES[PROBES[name]](m)
    tangents = m.tangents(primals)
    documented_missing = REPLACED[name].startswith("no forward-AD rule")
    assert documented_missing or REPLACED[name].startswith("wrong at second order")
    try:
        got = raw_nested_jvp(fn, primals, tangents)
    except (NotImplementedError, RuntimeError) as error:
        assert documented_missing, (
            f"torch's rule for {name} is now broken (nested jvp raises {error!r}): update REPLACED"
        )
        assert exactad._missing_forward_rule(error), f"unrecognised message: {error}"
        return
    e1, e2 = errors(got, differences(fn, primals, tangents))
    if max(e1, e2) < RTOL:
        pytest.fail(f"torch's rule for {name} is now right: update REPLACED")
    assert not documented_missing, (
        f"torch's rule for {name} now exists but is wrong (z'' off by {e2:.0e}): update REPLACED"
    )
    assert e2 > 1e-3, f"torch's rule for {name} is now only slightly off ({e2:.0e})"


# --- no global state ---------------------------------------------------------------------------


def _namespaces() -> dict[str, dict[str, object]]:
    return {
        space.__name__: dict(vars(space))
        for space in (F, torch, torch.linalg, torch._C._nn, torch.nn.utils.parametrizations)
    } | {"Tensor": dict(vars(torch.Tensor))}


def _same(before: dict[str, dict[str, object]]) -> None:
    now = _namespaces()
    for space, names in before.items():
        changed = [k for k, v in names.items() if now[space].get(k) is not v]
        assert not changed, f"{space}: {changed[:5]} replaced"


def test_the_mode_changes_no_global_state() -> None:
    before = _namespaces()
    originals = [exactad._resolve(name) for name in REPLACED]
    rng, filters = torch.get_rng_state(), list(warnings.filters)
    depth = torch._C._len_torch_function_stack()
    seen = []

    def fn(p: Weights) -> Tensor:
        seen.append(F.layer_norm is originals[0])
        _same(before)
        return F.layer_norm(p["x"], (3,))

    with ExactForwardAD():
        _same(before)
    m = Maker(0)
    primals = {"x": m.randn(2, 3)}
    second_order(fn, primals, m.tangents(primals))
    assert seen and all(seen)
    _same(before)
    assert [exactad._resolve(name) for name in REPLACED] == originals
    assert torch.equal(torch.get_rng_state(), rng)
    assert warnings.filters == filters
    assert torch._C._len_torch_function_stack() == depth


def test_the_mode_serves_plain_forward_ad_duals_too() -> None:
    """torch.autograd.forward_ad duals are recognised as differentiated (first order here:
    torch has no forward rule for _weight_norm_interface, the replacement has)."""
    import torch.autograd.forward_ad as fwad

    m = Maker(5)
    v, g, dv, dg = m.randn(3, 4), m.randn(3, 1), m.randn(3, 4), m.randn(3, 1)
    with fwad.dual_level():
        dual_v, dual_g = fwad.make_dual(v, dv), fwad.make_dual(g, dg)
        with pytest.raises(NotImplementedError, match="forward AD"):
            torch._weight_norm(dual_v, dual_g, 0)
        with ExactForwardAD():
            tangent = fwad.unpack_dual(torch._weight_norm(dual_v, dual_g, 0)).tangent
    want = jvp(lambda v, g: v * g / v.norm(dim=1, keepdim=True), (v, g), (dv, dg))[1]
    torch.testing.assert_close(tangent, want, rtol=1e-12, atol=1e-12)


def test_running_statistics_update_as_without_the_mode() -> None:
    m = Maker(1)
    x, w = m.randn(6, 3, 2), m.randn(3).requires_grad_()
    stats = {}
    for mode in (False, True):
        mean, var = torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT)
        imean, ivar = torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT)
        with ExactForwardAD() if mode else torch.enable_grad():
            out = F.batch_norm(x, mean, var, w, None, training=True, momentum=0.3)
            out = out + F.instance_norm(x, imean, ivar, use_input_stats=True, momentum=0.2)
        stats[mode] = (out.detach(), mean, var, imean, ivar)
    for native, replaced in zip(stats[False], stats[True], strict=True):
        torch.testing.assert_close(replaced, native, rtol=1e-12, atol=1e-12)


def test_errors_of_torch_are_kept() -> None:
    x = torch.zeros(1, 3, dtype=DT, requires_grad=True)
    with ExactForwardAD(), pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(x, None, None, training=True)
    with ExactForwardAD(), pytest.raises(RuntimeError, match="Halving dimension must be even"):
        F.glu(torch.zeros(3, requires_grad=True))
    with pytest.raises(ValueError, match="same keys"):
        second_order(lambda p: p["x"], {"x": x}, {"y": x})
    with pytest.raises(
        RuntimeError, match="cannot be multiplied"
    ):  # not a missing rule: raised, not hidden
        second_order(lambda p: p["x"] @ torch.ones(4, 4, dtype=DT), {"x": x}, {"x": x})


# --- the fallbacks -----------------------------------------------------------------------------


class NoJvp(torch.autograd.Function):
    """exp with a backward but no jvp: nested jvp raises, reverse mode works."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad * out


class OnceOnly(torch.autograd.Function):
    """exp whose backward cannot be differentiated: reverse mode fails too."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.exp()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * x.exp()


def _exp_case(op: Callable[[Tensor], Tensor]) -> tuple[Fn, Weights, Weights, Tensor, Tensor]:
    """fn = op(x * w) + (x * w)^2 (op = exp) with its exact z' and z''."""
    m = Maker(2)
    p = {"x": m.randn(3, 4), "w": m.randn(4)}
    t = m.tangents(p)

    def fn(q: Weights) -> Tensor:
        y = q["x"] * q["w"].to(q["x"].dtype)
        return op(y) + y * y

    y = p["x"] * p["w"]
    dy = t["x"] * p["w"] + p["x"] * t["w"]
    ddy = 2 * t["x"] * t["w"]
    exp = y.exp()
    return fn, p, t, exp * dy + 2 * y * dy, exp * (dy * dy + ddy) + 2 * (dy * dy + y * ddy)


def test_reverse_fallback_for_an_op_without_forward_rule() -> None:
    fn, p, t, z1, z2 = _exp_case(NoJvp.apply)
    velocity, acceleration, method = second_order(fn, p, t)
    assert method == "reverse"
    torch.testing.assert_close(velocity, z1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acceleration, z2, rtol=1e-12, atol=1e-12)


def test_finite_difference_fallback_for_an_op_without_double_backward() -> None:
    fn, p, t, z1, z2 = _exp_case(OnceOnly.apply)
    with pytest.raises(RuntimeError, match="double backward"):
        exactad.reverse_second_order(fn, p, t)  # not silently missing the exp branch
    velocity, acceleration, method = second_order(fn, p, t)
    assert method == "finite-differences"
    assert velocity.dtype == acceleration.dtype == DT
    torch.testing.assert_close(velocity, z1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(acceleration, z2, rtol=1e-8, atol=1e-8)


def test_finite_differences_cast_float32_weights_to_float64() -> None:
    fn, p, t, _, _ = _exp_case(torch.exp)
    p32 = {k: v.float() for k, v in p.items()}
    t32 = {k: v.float() for k, v in t.items()}
    velocity, acceleration = exactad.finite_differences(fn, p32, t32)
    assert velocity.dtype == DT
    p64 = {k: v.double() for k, v in p32.items()}
    want = exactad.reverse_second_order(fn, p64, {k: v.double() for k, v in t32.items()})
    torch.testing.assert_close(velocity, want[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(acceleration, want[1], rtol=1e-8, atol=1e-8)


def test_reverse_mode_edge_cases() -> None:
    m = Maker(3)
    p = {"x": m.randn(4)}
    t = m.tangents(p)
    constant = exactad.reverse_second_order(lambda q: torch.ones(2, dtype=DT), p, t)
    assert all(torch.equal(d, torch.zeros(2, dtype=DT)) for d in constant)
    linear = exactad.reverse_second_order(lambda q: 3 * q["x"], p, t)
    torch.testing.assert_close(linear[0], 3 * t["x"])
    assert torch.equal(linear[1], torch.zeros(4, dtype=DT))
    with torch.inference_mode():
        q = {k: v.clone() for k, v in p.items()}
        inside = exactad.reverse_second_order(lambda w: w["x"].sin(), q, t)
    torch.testing.assert_close(inside[1], -p["x"].sin() * t["x"] ** 2)


@pytest.mark.parametrize(
    "op",
    [
        lambda x: F.grid_sample(x.view(1, 1, 3, 4), x.view(1, 3, 2, 2).tanh(), align_corners=False),
        lambda x: F.huber_loss(x, torch.zeros_like(x), reduction="none"),
    ],
    ids=["grid_sample", "huber_loss"],
)
def test_ops_left_to_the_reverse_fallback(op: Callable[[Tensor], Tensor]) -> None:
    """Ops with no forward rule that are not replaced: second_order still answers exactly."""
    m = Maker(4)
    p = {"x": m.randn(12)}
    t = m.tangents(p)
    fn = lambda q: op(q["x"] * 1.5)  # noqa: E731
    velocity, acceleration, method = second_order(fn, p, t)
    assert method == "reverse"
    e1, e2 = errors((velocity, acceleration), differences(fn, p, t))
    assert e1 < RTOL and e2 < RTOL
