"""Jets: the calculus of (z, z', z'') triples, for rules that mix several tensors.

A jet is a value with its first two derivatives along the path, a derivative that is known
to be zero left as None. Products of jets follow Leibniz ((ab)' = a'b + ab', (ab)'' = a''b
+ 2a'b' + ab''), elementwise maps the chain rule (y' = s'(x) x', y'' = s''(x) x'^2 +
s'(x) x''); on these sit softmax attention, layer and RMS norm, and the activations of the
language models. :mod:`mliscan.taylor` (the per-layer rules over stacks) hands them to a
model's ``taylor_forward`` as ``t.rules`` (:class:`JetRules`): adapters never import them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch

# (z, z', z'') with derivatives that are known to be zero left as None.
# The language models' rules (embedding, layer norm, attention with softmax, LSTM cells)
# mix several stacks (products, matrix products), so they are written over jets.
Jet = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """a + b, a missing (zero) derivative left out."""
    if a is None:
        return b
    return a if b is None else a + b


def jet_map(fn: Callable[[torch.Tensor], torch.Tensor], a: Jet) -> Jet:
    """A map linear in its input and free of weights (a view, a selection, a scale)."""
    return (fn(a[0]), None if a[1] is None else fn(a[1]), None if a[2] is None else fn(a[2]))


def jet_add(a: Jet, b: Jet) -> Jet:
    return (a[0] + b[0], plus(a[1], b[1]), plus(a[2], b[2]))


def _acc(
    acc: torch.Tensor | None, x: torch.Tensor | None, y: torch.Tensor | None, value: float = 1.0
) -> torch.Tensor | None:
    """acc + value x y, where ``acc`` (None: zero) is a tensor the calling rule made itself:
    updated in place when it already has the full shape (no new tensor)."""
    if x is None or y is None:
        return acc
    if acc is None:
        out = x * y
        return out if value == 1.0 else out.mul_(value)
    try:  # in place unless x y is larger than acc (broadcast): refused before any write
        return acc.addcmul_(x, y, value=value)
    except RuntimeError:
        return acc + value * (x * y)


def _times(t: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """t * other, in place in ``t`` (a tensor the calling rule made) where the shapes allow."""
    try:
        return t.mul_(other)
    except RuntimeError:  # other is larger than t (broadcast): refused before any write
        return t * other


def jet_product(
    a: Jet, b: Jet, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.mul
) -> Jet:
    """A bilinear product (elementwise or matrix): (ab)' = a'b + ab',
    (ab)'' = a''b + 2a'b' + ab''."""
    if op is torch.mul:  # elementwise: each derivative accumulated in one tensor
        z = a[0] * b[0]
        d1 = _acc(_acc(None, a[1], b[0]), a[0], b[1])
        d2 = _acc(_acc(_acc(None, a[2], b[0]), a[0], b[2]), a[1], b[1], 2.0)
        return z, d1, d2
    z = op(a[0], b[0])
    d1 = plus(None if a[1] is None else op(a[1], b[0]), None if b[1] is None else op(a[0], b[1]))
    d2 = plus(
        plus(None if a[2] is None else op(a[2], b[0]), None if b[2] is None else op(a[0], b[2])),
        None if a[1] is None or b[1] is None else 2 * op(a[1], b[1]),
    )
    return z, d1, d2


def jet_elementwise(a: Jet, f: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> Jet:
    """y = s(x) given s, s', s'' at x: y' = s' x', y'' = s'' x'^2 + s' x'' (``f2`` is
    consumed: y'' is written over it)."""
    _, d1, d2 = a
    y1 = None if d1 is None else f1 * d1
    y2 = None if d1 is None else _times(_times(f2, d1), d1)
    return f, y1, _acc(y2, f1, d2)


def jet_sigmoid(a: Jet) -> Jet:
    s = torch.sigmoid(a[0])
    if _value_only(a):
        return s, None, None
    rest = 1 - s
    s1 = s * rest
    return jet_elementwise(a, s, s1, rest.sub_(s).mul_(s1))  # s'' = s' (1 - 2 s)


def jet_tanh(a: Jet) -> Jet:
    t = torch.tanh(a[0])
    if _value_only(a):
        return t, None, None
    t1 = torch.addcmul(t.new_ones(()), t, t, value=-1)  # 1 - t^2
    return jet_elementwise(a, t, t1, (t * t1).mul_(-2))


def jet_relu(a: Jet) -> Jet:
    mask = a[0] > 0
    return jet_map(lambda v: v * mask, a)


def _value_only(a: Jet) -> bool:
    """No derivative reaches this rule (a part computed for its value only)."""
    return a[1] is None and a[2] is None


def jet_gelu(a: Jet, approximate: str = "none") -> Jet:
    x = a[0]
    if _value_only(a):  # the same value as below, without s' and s''
        if approximate == "tanh":
            c, k = math.sqrt(2 / math.pi), 0.044715
            t = (x**3).mul_(k).add_(x).mul_(c).tanh_()
            return (0.5 * x) * (1 + t), None, None
        return x * (0.5 * (1 + torch.erf(x / math.sqrt(2)))), None, None
    if approximate == "tanh":  # 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
        c, k = math.sqrt(2 / math.pi), 0.044715
        t = (x**3).mul_(k).add_(x).mul_(c).tanh_()  # tanh(c (x + k x^3)), the model's value
        half_x = 0.5 * x
        one_t = 1 + t
        f = half_x * one_t
        u1 = (x * x).mul_(3 * k * c).add_(c)  # u' = c (1 + 3 k x^2); u'' = 6 k c x
        sech2 = torch.addcmul(t.new_ones(()), t, t, value=-1)
        g = sech2 * u1
        f1 = one_t.mul_(0.5).addcmul_(half_x, g)  # 0.5 (1 + t) + 0.5 x sech2 u'
        # f'' = sech2 u' + 0.5 x sech2 (u'' - 2 t u'^2)
        f2 = (t * u1).mul_(u1).mul_(-2).add_(x, alpha=6 * k * c).mul_(sech2).mul_(half_x).add_(g)
        return jet_elementwise(a, f, f1, f2)
    x2 = x * x
    phi = x2.mul(-0.5).exp_().div_(math.sqrt(2 * math.pi))
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    f1 = torch.addcmul(cdf, x, phi)
    return jet_elementwise(a, x * cdf, f1, x2.neg_().add_(2).mul_(phi))


def jet_silu(a: Jet) -> Jet:
    x = a[0]
    s = torch.sigmoid(x)
    if _value_only(a):
        return x * s, None, None
    rest = 1 - s
    s1 = s * rest
    f1 = torch.addcmul(s, x, s1)  # s + x s'
    f2 = rest.sub_(s).mul_(x).add_(2).mul_(s1)  # s' (2 + x (1 - 2 s))
    return jet_elementwise(a, x * s, f1, f2)


def _dot(s: torch.Tensor, d: torch.Tensor, dim: int, scratch: list[torch.Tensor]) -> torch.Tensor:
    """<s, d> along ``dim`` (kept), the products written into one reused scratch tensor."""
    if d.shape != s.shape:
        return (s * d).sum(dim, keepdim=True)
    if not scratch:
        scratch.append(torch.empty_like(s))
    return torch.mul(s, d, out=scratch[0]).sum(dim, keepdim=True)


def jet_softmax(a: Jet, dim: int = -1) -> Jet:
    """s = softmax(x): s' = s u with u = x' - <s, x'>, and s'' = s (u^2 + x'' - <s, x''> -
    <s u, x'>). Where x = -inf (a mask) s is 0 and so are both derivatives, whatever finite
    x' and x'' are there."""
    s = torch.softmax(a[0], dim=dim)
    _, d1, d2 = a
    if d1 is None and d2 is None:
        return s, None, None
    scratch: list[torch.Tensor] = []
    inner = None
    s1 = None
    if d1 is not None:
        u = d1 - _dot(s, d1, dim, scratch)
        s1 = s * u
        inner = _times(u, u).sub_(_dot(s1, d1, dim, scratch))
    if d2 is not None:
        rest = d2 - _dot(s, d2, dim, scratch)
        inner = rest if inner is None else inner.add_(rest)
    assert inner is not None
    return s, s1, _times(inner, s)


def jet_attention(
    q: Jet, k: Jet, v: Jet, scaling: float, masked: torch.Tensor | None = None
) -> Jet:
    """softmax(q k^T scaling, masked scores at -inf) v over the last two axes ([..., L, d]).

    The products are grouped so that every [L, L] tensor is written once: the scores'
    derivatives are single products over concatenated feature axes (q k1^T + q1 k^T =
    [q, q1] [k1, k]^T), and each of s, s', s'' multiplies the values' blocks side by side.
    The scale is applied to q (smaller than the scores), and the scores' derivatives need no
    mask (see jet_softmax)."""
    q = jet_map(lambda u: u * scaling, q)
    (q0, q1, q2), (k0, k1, k2) = q, k

    def pairs(terms: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> torch.Tensor | None:
        live = [(a, b) for a, b in terms if a is not None and b is not None]
        if not live:
            return None
        left = torch.cat([a for a, _ in live], -1) if len(live) > 1 else live[0][0]
        right = torch.cat([b for _, b in live], -1) if len(live) > 1 else live[0][1]
        return left @ right.transpose(-1, -2)

    z = q0 @ k0.transpose(-1, -2)
    d1 = pairs([(q1, k0), (q0, k1)])
    d2 = pairs([(q2, k0), (None if q1 is None else 2 * q1, k1), (q0, k2)])
    if masked is not None:
        z = z.masked_fill_(masked, float("-inf"))  # z: a new product, filled in place
    s, s1, s2 = jet_softmax((z, d1, d2), -1)
    v0, v1, v2 = v
    width = v0.shape[-1]

    def times(p: torch.Tensor, blocks: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        live = [b for b in blocks if b is not None]
        out = (p @ torch.cat(live, -1)).split(width, -1) if len(live) > 1 else [p @ live[0]]
        it = iter(out)
        return [None if b is None else next(it) for b in blocks]

    y, y1, y2 = times(s, [v0, v1, v2])
    if s1 is not None:
        a, b = times(s1, [v0, None if v1 is None else 2 * v1])
        y1, y2 = plus(y1, a), plus(y2, b)
    if s2 is not None:
        y2 = plus(y2, s2 @ v0)
    return cast(torch.Tensor, y), y1, y2  # times keeps v0's product: a tensor


def jet_layer_norm(
    a: Jet,
    shape: tuple[int, ...],
    weight: Jet | None,
    bias: Jet | None,
    eps: float,
    rms: bool = False,
) -> Jet:
    """Layer norm (or RMS norm, ``rms``) over the last ``len(shape)`` axes: u = x - mean x
    (RMS: u = x), v = mean u^2 + eps, r = v^(-1/2), n = u r, y = n w + b. With m1 = mean(n
    u'), m2 = mean(n u''), q = mean(u'^2), the chain rule gives n' = r (u' - n m1) and
    n'' = r (u'' - 2 r m1 u' + n (3 r m1^2 - r q - m2)); the value is computed as before."""
    dims = tuple(range(-len(shape), 0))

    def mean(t: torch.Tensor) -> torch.Tensor:
        return t.mean(dims, keepdim=True)

    x, x1, x2 = a
    u = x if rms else x - mean(x)
    v = mean(u * u) + eps
    r = torch.rsqrt(v)
    n = u * r
    u1 = None if x1 is None else (x1 if rms else x1 - mean(x1))
    u2 = None if x2 is None else (x2 if rms else x2 - mean(x2))
    n1 = n2 = None
    if u1 is not None:
        m1 = mean(n * u1)
        rm1 = r * m1
        c = (3 * rm1).mul_(m1).sub_(r * mean(u1 * u1))  # 3 r m1^2 - r q
        if u2 is not None:
            c.sub_(mean(n * u2))
            acc = torch.addcmul(u2, u1, rm1, value=-2)
        else:
            acc = u1 * (-2 * rm1)
        n2 = acc.addcmul_(n, c).mul_(r)
        n1 = torch.addcmul(u1, n, m1, value=-1).mul_(r)
    elif u2 is not None:
        n2 = torch.addcmul(u2, n, mean(n * u2), value=-1).mul_(r)
    out: Jet = (n, n1, n2)
    if weight is not None:
        w, dw, w2 = weight
        if w2 is None:  # a weight along the path (w'' = 0): written into n' and n''
            y = n * w
            y2 = _acc(None if n2 is None else _times(n2, w), n1, dw, 2.0)
            y1 = _acc(None if n1 is None else _times(n1, w), n, dw)
            out = (y, y1, y2)
        else:
            out = jet_product(out, weight)
    if bias is not None:
        out = jet_add(out, bias)
    return out


def zeros_jet(like: torch.Tensor) -> Jet:
    return torch.zeros_like(like), None, None


def stack_jets(jets: list[Jet], dim: int) -> Jet:
    """torch.stack of jets (a missing derivative counts as zeros where others have one)."""

    def part(i: int) -> torch.Tensor | None:
        if all(j[i] is None for j in jets):
            return None
        return torch.stack(
            [torch.zeros_like(j[0]) if (d := j[i]) is None else d for j in jets], dim
        )

    return torch.stack([j[0] for j in jets], dim), part(1), part(2)


class JetRules:
    """The jet rules, for a model's ``taylor_forward`` (``J = t.rules``): adapters reach them
    through the tracer the engine passes in, never by importing the engine."""

    map = staticmethod(jet_map)
    add = staticmethod(jet_add)
    mul = staticmethod(jet_product)
    sigmoid = staticmethod(jet_sigmoid)
    tanh = staticmethod(jet_tanh)
    relu = staticmethod(jet_relu)
    gelu = staticmethod(jet_gelu)
    silu = staticmethod(jet_silu)
    softmax = staticmethod(jet_softmax)
    attention = staticmethod(jet_attention)
    layer_norm = staticmethod(jet_layer_norm)
    zeros = staticmethod(zeros_jet)
    stack = staticmethod(stack_jets)

    @staticmethod
    def matmul(a: Jet, b: Jet) -> Jet:
        return jet_product(a, b, torch.matmul)
