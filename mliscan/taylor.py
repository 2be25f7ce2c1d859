"""Second-order forward mode for the common layers: z, z' and z'' in one pass.

Along the path the weights are linear in alpha (theta'' = 0), so each layer's value and its
first two alpha-derivatives follow from the layer's own rule. For a linear map y = W x + b,
with W' = delta_W and b' = delta_b:

    y   = W x + b
    y'  = W x' + W' x + b'
    y'' = W x'' + 2 W' x'

The pass carries one stacked tensor [x; x'; x''] (k = 1, 2 or 3 blocks of N rows: leading
derivatives that are known to be zero are not stored), so each linear layer costs one product
of W with the stack and one of W' with [x; x'], about 5 products per layer where nested jvp
needs about 9. An elementwise activation s gives y' = s'(x) x' and y'' = s''(x) x'^2 + s'(x) x''.
Batch norm in eval mode is affine in x with fixed statistics (held fixed along alpha, as in the
paper's code).

Modules built only from Sequential, Linear, Conv1d/2d, BatchNorm (eval), ReLU, Tanh, GELU,
Identity, Flatten and Dropout (eval) are handled here, and so is any module that states its
forward pass through a :class:`Tracer` in a ``taylor_forward(t, st)`` method (residual
blocks: children, ReLU, the residual add, parameter-free linear maps such as a shortcut or
pooling, a learnt shift or scale). For anything else :func:`supports` returns False and the
engine falls back to nested ``torch.func.jvp``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from mliscan import contract

_LEAVES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    *contract.BN_TYPES,
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.AvgPool2d,
    nn.Embedding,
    nn.LayerNorm,
    nn.ModuleList,
)


Stack = tuple[torch.Tensor, int]
_RELU = nn.ReLU()


class Tracer:
    """The second-order rules, for a module's ``taylor_forward(t, st)``.

    ``st`` is a stack: (tensor of k blocks [x; x'; x''] of n rows, k). Every call leaves its
    input stack untouched (a block's input also feeds its shortcut)."""

    def __init__(
        self,
        root: nn.Module,
        delta: Mapping[str, torch.Tensor],
        n: int,
        positions: torch.Tensor | None = None,
        full_values: bool = False,
    ) -> None:
        self.full_values = full_values
        self.values: torch.Tensor | None = None
        """With ``full_values``: the output at every position (value only), for the loss."""
        self.delta = delta
        self.n = n
        self.positions = positions
        """Sequence positions whose outputs are wanted (a language model's Gauss logits):
        a model may compute its output at these positions only."""
        self.moving = moving_tensors(root, delta)
        """Each moving tensor's difference, by the tensor's identity: a module or weight
        reached under several names (a shared layer, a tied weight) moves once."""

    def head(self, fn: Callable[[Jet], Jet], x: Jet) -> Jet:
        """A sequence model's output head (a per-position map) at the Gauss positions only;
        with ``full_values``, its value at every position too (kept in ``values``: the loss
        of the same pass)."""
        if self.positions is None:
            return fn(x)
        if self.full_values:
            self.values = fn((x[0], None, None))[0]
        return fn(jet_map(lambda v: v[:, self.positions], x))

    # jets (see to_jet): the rules that mix several stacks
    def jet(self, st: Stack) -> Jet:
        return to_jet(st, self.n)

    def stack(self, jet: Jet) -> Stack:
        return to_stack(jet)

    def param(self, module: nn.Module, name: str) -> Jet:
        """A weight along the path: (p, p' = its difference, p'' = 0)."""
        p = getattr(module, name)
        return p, self.moving.get(id(p)), None

    def dense(self, module: nn.Module, x: Jet, weight: str = "weight", bias: str = "bias") -> Jet:
        """F.linear(x, W, b) with W and b moving along the path: y = W x + b,
        y' = W x' + W' x + b', y'' = W x'' + 2 W' x' (W applied to every block in one product,
        W' to [x; x'] in another)."""
        w, dw, _ = self.param(module, weight)
        z, z1, z2 = x
        y = F.linear(z, w)
        y1 = None if z1 is None else F.linear(z1, w)
        y2 = None if z2 is None else F.linear(z2, w)
        if dw is not None:
            y1 = _plus(y1, F.linear(z, dw))
            if z1 is not None:
                y2 = _plus(y2, F.linear(z1, 2 * dw))
        if getattr(module, bias, None) is not None:
            b, db, _ = self.param(module, bias)
            y = y + b
            y1 = _plus(y1, db)
        return y, y1, y2

    def embedding(self, module: nn.Module, ids: torch.Tensor) -> Jet:
        """Rows of a moving table: z = E[ids], z' = E'[ids], z'' = 0."""
        table, d_table, _ = self.param(module, "weight")
        return (
            F.embedding(ids, table),
            None if d_table is None else F.embedding(ids, d_table),
            None,
        )

    def layer_norm(self, module: nn.Module, x: Jet) -> Jet:
        weight = self.param(module, "weight") if module.weight is not None else None
        bias = self.param(module, "bias") if getattr(module, "bias", None) is not None else None
        return jet_layer_norm(x, tuple(module.normalized_shape), weight, bias, module.eps)

    def __call__(self, module: nn.Module, st: Stack) -> Stack:
        """A child module, by its own rule."""
        s, k = st
        return _run(module, self, s, k, s.data_ptr())

    def relu(self, st: Stack) -> Stack:
        s, k = st
        return _run(_RELU, self, s, k, s.data_ptr())

    def linear(self, fn: Callable[[torch.Tensor], torch.Tensor], st: Stack) -> Stack:
        """A parameter-free map acting linearly on each example (the same map for z, z', z'')."""
        s, k = st
        return fn(s), k

    def add(self, a: Stack, b: Stack) -> Stack:
        """The residual add: blocks beyond a stack's k are zero."""
        (sa, ka), (sb, kb) = a, b
        if ka == kb:
            return sa + sb, ka
        (big, kbig), (small, _) = (a, b) if ka > kb else (b, a)
        out = big.clone()
        out[: small.shape[0]] += small
        return out, kbig

    def shift(self, module: nn.Module, name: str, st: Stack) -> Stack:
        """y = x + p for a learnt parameter p: y' = x' + p', y'' = x''."""
        s, k = st
        dp = self.moving.get(id(getattr(module, name)))
        blocks = list(s.split(self.n))
        blocks[0] = blocks[0] + getattr(module, name)
        if dp is not None:
            if k == 1:
                blocks.append(torch.zeros_like(blocks[0]))
            blocks[1] = blocks[1] + dp
        return torch.cat(blocks), len(blocks)

    def scale(self, module: nn.Module, name: str, st: Stack) -> Stack:
        """y = c x for a learnt parameter c: y' = c x' + c' x, y'' = c x'' + 2 c' x'."""
        s, k = st
        n = self.n
        c = getattr(module, name)
        dc = self.moving.get(id(c))
        blocks = [b * c for b in s.split(n)]
        if dc is not None:
            if k == 1:
                blocks.append(s[:n] * dc)
            else:
                blocks[1] = blocks[1] + s[:n] * dc
                if k == 2:
                    blocks.append(2 * s[n : 2 * n] * dc)
                else:
                    blocks[2] = blocks[2] + 2 * s[n : 2 * n] * dc
        return torch.cat(blocks), len(blocks)


def moving_tensors(root: nn.Module, delta: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """id(tensor) -> its difference along the path, for every name a parameter or buffer is
    reached by (a shared module's or tied weight's difference is held under one name)."""
    moving: dict[int, torch.Tensor] = {}
    named = [
        *root.named_parameters(remove_duplicate=False),
        *root.named_buffers(remove_duplicate=False),
    ]
    for name, t in named:
        if name in delta:
            moving[id(t)] = delta[name]
    return moving


def _leaf_ok(m: nn.Module) -> bool:
    """A layer this module's rules interpret: exact type, and a configuration they cover."""
    if not contract.exact_type(m, _LEAVES):
        return False
    if isinstance(m, nn.GELU) and m.approximate != "none":
        return False
    if isinstance(m, nn.Embedding) and m.max_norm is not None:
        return False
    if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode != "zeros":
        return False
    if isinstance(m, nn.Flatten) and m.start_dim == 0:
        return False
    return not (isinstance(m, nn.AvgPool2d) and m.divisor_override is not None)


def supports(module: nn.Module, delta: Mapping[str, torch.Tensor]) -> bool:
    """True when the second-order pass provably computes the module's own call (see
    :mod:`mliscan.contract`): every module an exact type with a rule here, or a class that
    states its own rule beside its forward; no hook or parametrization anywhere; BN with
    running statistics that are held, not interpolated. Modules and weights reached twice
    are fine: Sequential children are walked as ``Sequential.forward`` walks them, and
    weights are found by identity."""
    if not contract.all_plain(module):
        return False
    moving = moving_tensors(module, delta)
    covered: list[str] = []  # modules whose own rule covers their whole subtree
    for name, m in module.named_modules(remove_duplicate=False):
        if any(name.startswith(c) for c in covered):
            continue
        if hasattr(m, "taylor_forward"):
            if not contract.own_rule(m, "taylor_forward"):
                return False
            if getattr(m, "taylor_complete", False):
                covered.append(f"{name}." if name else "")
            continue
        if type(m) is nn.Sequential:
            continue
        if not _leaf_ok(m):
            return False
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
            m.running_mean is None or id(m.running_mean) in moving or id(m.running_var) in moving
        ):
            return False
    return True


def forward2(
    module: nn.Module,
    delta: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    positions: torch.Tensor | None = None,
    full_values: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, dz/dalpha, d2z/dalpha2) at the module's current weights (eval mode); with
    ``positions``, a sequence model's outputs at those positions only ([N, k, ...]), z
    included unless ``full_values`` (z then at every position, for the loss)."""
    n = x.shape[0]
    tracer = Tracer(module, delta, n, positions, full_values)
    stack, _k = _run(module, tracer, x, 1, x.data_ptr())
    blocks = list(stack.split(n))
    while len(blocks) < 3:
        blocks.append(torch.zeros_like(blocks[0]))
    value = tracer.values if tracer.values is not None else blocks[0]
    return value, blocks[1], blocks[2]


def _run(
    m: nn.Module, tracer: Tracer, s: torch.Tensor, k: int, owner_ptr: int = 0
) -> tuple[torch.Tensor, int]:
    """``owner_ptr`` is the input data's storage pointer: that tensor is never written to."""
    n = tracer.n
    d = tracer.moving.get
    if hasattr(m, "taylor_forward"):
        return m.taylor_forward(tracer, (s, k))
    if isinstance(m, nn.Sequential):
        for child in m._modules.values():  # as Sequential.forward: no de-duplication
            s, k = _run(child, tracer, s, k, owner_ptr)  # type: ignore[arg-type]
        return s, k
    if isinstance(m, nn.Linear) and s.ndim == 2:
        return _linear(s, k, n, m.weight, m.bias, d(id(m.weight)), d(id(m.bias)))
    if isinstance(m, nn.Linear):
        return _affine(s, k, n, m.weight, m.bias, d, F.linear, (-1,))
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d

        def op(inp: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return conv(inp, w, None, m.stride, m.padding, m.dilation, m.groups)

        view = (-1,) + (1,) * (m.weight.ndim - 2)
        return _affine(s, k, n, m.weight, m.bias, d, op, view)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _batchnorm(m, d, s, k, n)
    if isinstance(m, (nn.Embedding, nn.LayerNorm)):
        if isinstance(m, nn.Embedding):
            return to_stack(tracer.embedding(m, s))  # s: the token ids (k = 1)
        return to_stack(tracer.layer_norm(m, to_jet((s, k), n)))
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return s, k
    if isinstance(m, (nn.Flatten, nn.AvgPool2d)):
        return m(s), k  # linear and per-example: the same map for z, z' and z''
    x = s[:n]
    blocks = s.view(k, n, *s.shape[1:])
    if isinstance(m, nn.ReLU):
        # relu(x) = x * [x > 0], and the same mask gates x' and x'' (in place: the stack is a
        # fresh intermediate, except when the data itself reaches the layer)
        mask = (x > 0).to(s.dtype)
        if s.data_ptr() == owner_ptr:
            return (blocks * mask).view_as(s), k
        return blocks.mul_(mask).view_as(s), k
    if isinstance(m, nn.Tanh):
        t = torch.tanh(x)
        s1 = 1 - t * t
        out = blocks * s1
        out[0] = t
        if k >= 2:
            curv = -2 * t * s1 * s[n : 2 * n] ** 2
            return _with_second(out, k, curv)
        return out.view_as(s), k
    if isinstance(m, nn.GELU):
        phi = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        out = blocks * (cdf + x * phi)
        out[0] = x * cdf
        if k >= 2:
            curv = phi * (2 - x * x) * s[n : 2 * n] ** 2
            return _with_second(out, k, curv)
        return out.view_as(s), k
    raise TypeError(f"no second-order rule for {type(m).__name__}")


def _linear(s, k, n, w, b, dw, db) -> tuple[torch.Tensor, int]:
    """Linear layer on a 2-D stack, written into one preallocated output with fused products."""
    k_out = 3 if k >= 2 and dw is not None else (k if dw is None and db is None else max(k, 2))
    if k_out == 3 and k == 2 and dw is None:
        k_out = 2
    out = s.new_empty(k_out * n, w.shape[0])
    torch.mm(s, w.t(), out=out[: k * n])  # W applied to every block at once
    if k_out > k:
        out[k * n :].zero_()
    if b is not None:
        out[:n] += b
    if dw is not None:
        out[n : 2 * n].addmm_(s[:n], dw.t())  # y' += W' x
        if k >= 2:
            out[2 * n : 3 * n].addmm_(s[n : 2 * n], dw.t(), alpha=2)  # y'' += 2 W' x'
    if db is not None:
        out[n : 2 * n] += db
    return out, k_out


def _with_second(out: torch.Tensor, k: int, curv: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Add the s''(x) x'^2 term to the second-derivative block (creating it when k == 2)."""
    if k == 3:
        out[2] += curv
        return out.flatten(0, 1), 3
    return torch.cat([out.flatten(0, 1), curv]), 3


def _affine(s, k, n, w, b, moving, op, view) -> tuple[torch.Tensor, int]:
    dw = moving(id(w))
    db = None if b is None else moving(id(b))
    y = op(s, w)  # W applied to every block at once
    blocks = list(y.split(n))
    if b is not None:
        blocks[0] += b.view(view)
    if dw is not None or db is not None:
        if k == 1:
            blocks.append(torch.zeros_like(blocks[0]))
        if dw is not None:
            d = op(s[: min(k, 2) * n], dw)
            blocks[1] += d[:n]
            if k >= 2:
                if k == 2:
                    blocks.append(torch.zeros_like(blocks[0]))
                blocks[2] += 2 * d[n : 2 * n]
        if db is not None:
            blocks[1] += db.view(view)
    if len(blocks) == k:
        return y, k
    return torch.cat(blocks), len(blocks)


def _batchnorm(m, moving, s, k, n) -> tuple[torch.Tensor, int]:
    x = s[:n]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = torch.rsqrt(m.running_var + m.eps).view(shape)
    g = m.weight.view(shape) * inv if m.weight is not None else inv
    out = s.view(k, n, *s.shape[1:]) * g  # the linear part acts on every block
    shift = -m.running_mean.view(shape) * g
    if m.bias is not None:
        shift = shift + m.bias.view(shape)
    out[0] += shift
    dg = None if m.weight is None else moving(id(m.weight))
    db = None if m.bias is None else moving(id(m.bias))
    if dg is None and db is None:
        return out.view_as(s), k
    blocks = list(out.unbind(0))
    if k == 1:
        blocks.append(torch.zeros_like(blocks[0]))
    if dg is not None:
        dgi = dg.view(shape) * inv
        blocks[1] = blocks[1] + (x - m.running_mean.view(shape)) * dgi
        if k >= 2:
            if k == 2:
                blocks.append(torch.zeros_like(blocks[0]))
            blocks[2] = blocks[2] + 2 * s[n : 2 * n] * dgi
    if db is not None:
        blocks[1] = blocks[1] + db.view(shape)
    return torch.cat(blocks), len(blocks)


# ---- jets: (z, z', z'') with derivatives that are known to be zero left as None ------------
# The language models' rules (embedding, layer norm, attention with softmax, LSTM cells)
# mix several stacks (products, matrix products), so they are written over jets.
Jet = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def to_jet(st: Stack, n: int) -> Jet:
    s, k = st
    blocks = list(s.split(n)) if k > 1 else [s]
    return (blocks[0], blocks[1] if k > 1 else None, blocks[2] if k > 2 else None)


def to_stack(jet: Jet) -> Stack:
    z, d1, d2 = jet
    if d2 is not None:
        return torch.cat([z, torch.zeros_like(z) if d1 is None else d1, d2]), 3
    if d1 is not None:
        return torch.cat([z, d1]), 2
    return z, 1


def _plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _times(c: float, a: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None else c * a


def jet_map(fn: Callable[[torch.Tensor], torch.Tensor], a: Jet) -> Jet:
    """A map linear in its input and free of weights (a view, a selection, a scale)."""
    return (fn(a[0]), None if a[1] is None else fn(a[1]), None if a[2] is None else fn(a[2]))


def jet_add(a: Jet, b: Jet) -> Jet:
    return (a[0] + b[0], _plus(a[1], b[1]), _plus(a[2], b[2]))


def jet_product(
    a: Jet, b: Jet, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.mul
) -> Jet:
    """A bilinear product (elementwise or matrix): (ab)' = a'b + ab',
    (ab)'' = a''b + 2a'b' + ab''."""
    z = op(a[0], b[0])
    d1 = _plus(None if a[1] is None else op(a[1], b[0]), None if b[1] is None else op(a[0], b[1]))
    d2 = _plus(
        _plus(None if a[2] is None else op(a[2], b[0]), None if b[2] is None else op(a[0], b[2])),
        None if a[1] is None or b[1] is None else 2 * op(a[1], b[1]),
    )
    return z, d1, d2


def jet_elementwise(a: Jet, f: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> Jet:
    """y = s(x) given s, s', s'' at x: y' = s' x', y'' = s'' x'^2 + s' x''."""
    _, d1, d2 = a
    y1 = None if d1 is None else f1 * d1
    y2 = _plus(None if d1 is None else f2 * d1 * d1, None if d2 is None else f1 * d2)
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
        inner = _plus(inner, d2 - (s * d2).sum(dim, keepdim=True))
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
        y1, y2 = _plus(y1, a), _plus(y2, b)
    if s2 is not None:
        y2 = _plus(y2, s2 @ v0)
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
    v2 = _plus(None if u1 is None else 2 * mean(u1 * u1), None if u2 is None else 2 * mean(u * u2))
    r3 = r / v  # v^(-3/2)
    r1 = None if v1 is None else -0.5 * r3 * v1
    r2 = _plus(
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


Tracer.rules = JetRules
