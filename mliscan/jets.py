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


def jet_product(
    a: Jet, b: Jet, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.mul
) -> Jet:
    """A bilinear product (elementwise or matrix): (ab)' = a'b + ab',
    (ab)'' = a''b + 2a'b' + ab''."""
    z = op(a[0], b[0])
    d1 = plus(None if a[1] is None else op(a[1], b[0]), None if b[1] is None else op(a[0], b[1]))
    d2 = plus(
        plus(None if a[2] is None else op(a[2], b[0]), None if b[2] is None else op(a[0], b[2])),
        None if a[1] is None or b[1] is None else 2 * op(a[1], b[1]),
    )
    return z, d1, d2


def jet_elementwise(a: Jet, f: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> Jet:
    """y = s(x) given s, s', s'' at x: y' = s' x', y'' = s'' x'^2 + s' x''."""
    _, d1, d2 = a
    y1 = None if d1 is None else f1 * d1
    y2 = plus(None if d1 is None else f2 * d1 * d1, None if d2 is None else f1 * d2)
    return f, y1, y2


def jet_sigmoid(a: Jet) -> Jet:
    s = torch.sigmoid(a[0])
    s1 = s * (1 - s)
    return jet_elementwise(a, s, s1, s1 * (1 - 2 * s))


def jet_tanh(a: Jet) -> Jet:
    t = torch.tanh(a[0])
    t1 = 1 - t * t
    return jet_elementwise(a, t, t1, -2 * t * t1)


def jet_relu(a: Jet) -> Jet:
    mask = (a[0] > 0).to(a[0].dtype)
    return jet_map(lambda v: v * mask, a)


def jet_gelu(a: Jet, approximate: str = "none") -> Jet:
    x = a[0]
    if approximate == "tanh":  # 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
        c = math.sqrt(2 / math.pi)
        u = c * (x + 0.044715 * x**3)
        u1 = c * (1 + 3 * 0.044715 * x * x)
        u2 = c * 6 * 0.044715 * x
        t = torch.tanh(u)
        sech2 = 1 - t * t
        f = 0.5 * x * (1 + t)
        f1 = 0.5 * (1 + t) + 0.5 * x * sech2 * u1
        f2 = sech2 * u1 + 0.5 * x * (sech2 * u2 - 2 * t * sech2 * u1 * u1)
        return jet_elementwise(a, f, f1, f2)
    phi = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return jet_elementwise(a, x * cdf, cdf + x * phi, phi * (2 - x * x))


def jet_silu(a: Jet) -> Jet:
    x = a[0]
    s = torch.sigmoid(x)
    s1 = s * (1 - s)
    return jet_elementwise(a, x * s, s + x * s1, 2 * s1 + x * s1 * (1 - 2 * s))


def jet_softmax(a: Jet, dim: int = -1) -> Jet:
    """s = softmax(x): s' = s u with u = x' - <s, x'>, and s'' = s (u^2 + x'' - <s, x''> -
    <s u, x'>). Where x = -inf (a mask) s is 0 and so are both derivatives, whatever finite
    x' and x'' are there."""
    s = torch.softmax(a[0], dim=dim)
    _, d1, d2 = a
    if d1 is None and d2 is None:
        return s, None, None
    inner = None
    s1 = None
    if d1 is not None:
        u = d1 - (s * d1).sum(dim, keepdim=True)
        s1 = s * u
        inner = u * u - (s1 * d1).sum(dim, keepdim=True)
    if d2 is not None:
        inner = plus(inner, d2 - (s * d2).sum(dim, keepdim=True))
    return s, s1, s * inner


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
        z = z.masked_fill(masked, float("-inf"))
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
    return y, y1, y2


def jet_layer_norm(
    a: Jet,
    shape: tuple[int, ...],
    weight: Jet | None,
    bias: Jet | None,
    eps: float,
    rms: bool = False,
) -> Jet:
    """Layer norm (or RMS norm, ``rms``) over the last ``len(shape)`` axes, with the rules of
    its parts: u = x - mean x, v = mean u^2 + eps, r = v^(-1/2), n = u r, y = n w + b."""
    dims = tuple(range(-len(shape), 0))

    def mean(t: torch.Tensor) -> torch.Tensor:
        return t.mean(dims, keepdim=True)

    x, x1, x2 = a
    u = x if rms else x - mean(x)
    u1 = None if x1 is None else (x1 if rms else x1 - mean(x1))
    u2 = None if x2 is None else (x2 if rms else x2 - mean(x2))
    v = mean(u * u) + eps
    r = torch.rsqrt(v)
    v1 = None if u1 is None else 2 * mean(u * u1)
    v2 = plus(None if u1 is None else 2 * mean(u1 * u1), None if u2 is None else 2 * mean(u * u2))
    r3 = r / v  # v^(-3/2)
    r1 = None if v1 is None else -0.5 * r3 * v1
    r2 = plus(
        None if v1 is None else 0.75 * (r3 / v) * v1 * v1,
        None if v2 is None else -0.5 * r3 * v2,
    )
    out = jet_product((u, u1, u2), (r, r1, r2))
    if weight is not None:
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
        return torch.stack([torch.zeros_like(j[0]) if j[i] is None else j[i] for j in jets], dim)

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
