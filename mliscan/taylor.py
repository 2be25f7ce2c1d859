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

This module holds the per-layer rules over stacks and the tracer that walks a module; the
calculus of products of jets (attention, norms, the language models' activations) is
:mod:`mliscan.jets`, reached by a model's rule as ``t.rules``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar, cast

import torch
from torch import nn
from torch.nn import functional as F

from mliscan import contract
from mliscan.jets import Jet, JetRules, jet_layer_norm, jet_map

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

    rules: ClassVar[type[JetRules]]
    """The rules over jets (:class:`mliscan.jets.JetRules`), for a model's own rule."""

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
        of the same pass, computed without derivatives)."""
        if self.positions is None:
            return fn(x)
        if self.full_values:
            with self.values_only():
                self.values = fn((x[0], None, None))[0]
        return fn(jet_map(lambda v: v[:, self.positions], x))

    def tail(
        self,
        fn: Callable[[Jet, torch.Tensor | None], Jet],
        x: Jet,
        rows: torch.Tensor | None = None,
    ) -> Jet:
        """The end of a model from its last attention's queries on, where every position is
        computed on its own: ``fn(x, rows)`` computes it for the positions ``rows`` only
        (the queries, the residual stream and the head at those rows; None: every position).
        Its derivatives are wanted at the Gauss positions only, so the last block's
        per-position work with derivatives is done there only; with ``full_values`` its value
        at every position is computed as well, without derivatives (kept in ``values``: the
        loss of the pass). ``rows`` given here are the only positions the output reads (a
        classifier's first token): the pass's own value is then the whole value."""
        given = rows is not None
        if rows is None:
            rows = self.positions
        if rows is None:
            return fn(x, None)
        if self.full_values and not given:
            with self.values_only():
                self.values = fn((x[0], None, None), None)[0]
        return fn(x, rows)

    @contextlib.contextmanager
    def values_only(self) -> Iterator[None]:
        """Within the block no weight moves: rules given derivative-free inputs compute
        values only (the value at every position that the loss needs)."""
        moving, self.moving = self.moving, {}
        try:
            yield
        finally:
            self.moving = moving

    # jets (see to_jet): the rules that mix several stacks
    def jet(self, st: Stack) -> Jet:
        return to_jet(st, self.n)

    def stack(self, jet: Jet) -> Stack:
        return to_stack(jet)

    def param(self, module: nn.Module, name: str) -> Jet:
        """A weight along the path: (p, p' = its difference, p'' = 0)."""
        p = getattr(module, name)
        return p, self.moving.get(id(p)), None

    def dense(
        self,
        module: nn.Module,
        x: Jet,
        weight: str = "weight",
        bias: str = "bias",
        transposed: bool = False,
    ) -> Jet:
        """F.linear(x, W, b) with W and b moving along the path (``transposed``: x @ W + b,
        the weight stored [in, out] as in transformers' Conv1D): see :func:`dense_jet`."""
        w, dw, _ = self.param(module, weight)
        b = db = None
        if getattr(module, bias, None) is not None:
            b, db, _ = self.param(module, bias)
        return dense_jet(x, w, dw, b, db, transposed)

    def embedding(self, module: nn.Module, ids: torch.Tensor) -> Jet:
        """Rows of a moving table: z = E[ids], z' = E'[ids], z'' = 0."""
        table, d_table, _ = self.param(module, "weight")
        return (
            F.embedding(ids, table),
            None if d_table is None else F.embedding(ids, d_table),
            None,
        )

    def layer_norm(self, module: nn.LayerNorm, x: Jet) -> Jet:
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
    rule_values: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, dz/dalpha, d2z/dalpha2) at the module's current weights (eval mode); with
    ``positions``, a sequence model's outputs at those positions only ([N, k, ...]), z
    included unless ``full_values`` (z then at every position, for the loss).
    ``rule_values`` receives z as the rules return it (at the positions, whatever
    ``full_values``): what the run-time check compares with the module's own forward."""
    n = x.shape[0]
    tracer = Tracer(module, delta, n, positions, full_values)
    stack, _k = _run(module, tracer, x, 1, x.data_ptr())
    blocks = list(stack.split(n))
    while len(blocks) < 3:
        blocks.append(torch.zeros_like(blocks[0]))
    if rule_values is not None:
        rule_values.append(blocks[0])
    value = tracer.values if tracer.values is not None else blocks[0]
    return value, blocks[1], blocks[2]


def _run(
    m: nn.Module, tracer: Tracer, s: torch.Tensor, k: int, owner_ptr: int = 0
) -> tuple[torch.Tensor, int]:
    """``owner_ptr`` is the input data's storage pointer: that tensor is never written to."""
    n = tracer.n
    d = tracer.moving.get
    if hasattr(m, "taylor_forward"):  # the module's own rule
        return cast(Callable[[Tracer, Stack], Stack], m.taylor_forward)(tracer, (s, k))
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
        mask = x > 0
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
                blocks[2].add_(d[n : 2 * n], alpha=2)
        if db is not None:
            blocks[1] += db.view(view)
    if len(blocks) == k:
        return y, k
    return torch.cat(blocks), len(blocks)


def _batchnorm(m, moving, s, k, n) -> tuple[torch.Tensor, int]:
    """Eval-mode BN: affine in x with held statistics, y = g x + shift, g = w / sqrt(var +
    eps); moving w and b add y' += (x - mean) w' / sqrt(var + eps) + b', y'' += 2 x' w' /
    sqrt(var + eps). Written into one output of every block (no copies)."""
    x = s[:n]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = torch.rsqrt(m.running_var + m.eps).view(shape)
    g = m.weight.view(shape) * inv if m.weight is not None else inv
    shift = -m.running_mean.view(shape) * g
    if m.bias is not None:
        shift = shift + m.bias.view(shape)
    dg = None if m.weight is None else moving(id(m.weight))
    db = None if m.bias is None else moving(id(m.bias))
    k_out = k
    if dg is not None or db is not None:
        k_out = 3 if dg is not None and k >= 2 else max(k, 2)
    out = s.new_empty(k_out, n, *s.shape[1:])
    torch.mul(s.view(k, n, *s.shape[1:]), g, out=out[:k])  # the linear part acts on every block
    if k_out > k:
        out[k:].zero_()
    out[0] += shift
    if dg is not None:
        dgi = dg.view(shape) * inv
        out[1].addcmul_(x - m.running_mean.view(shape), dgi)
        if k >= 2:
            out[2].addcmul_(s[n : 2 * n], dgi, value=2)
    if db is not None:
        out[1] += db.view(shape)
    return out.view(k_out * n, *s.shape[1:]), k_out


# ---- stacks <-> jets -------------------------------------------------------------------


def to_jet(st: Stack, n: int) -> Jet:
    s, k = st
    blocks = list(s.split(n)) if k > 1 else [s]
    return (blocks[0], blocks[1] if k > 1 else None, blocks[2] if k > 2 else None)


def to_stack(jet: Jet) -> Stack:
    """The stack of a jet: a view when its parts are consecutive blocks of one tensor (the
    output of :func:`dense_jet`, a stack's own blocks), else a copy."""
    z, d1, d2 = jet
    if d2 is not None:
        parts = [z, torch.zeros_like(z) if d1 is None else d1, d2]
    elif d1 is not None:
        parts = [z, d1]
    else:
        return z, 1
    whole = _consecutive(parts)
    return (torch.cat(parts) if whole is None else whole), len(parts)


def _consecutive(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """The tensor [p0; p1; ...] as a view, when the parts are contiguous, of one shape, and
    lie one after the other in one storage; else None."""
    first = parts[0]
    if first.ndim == 0 or not all(p.is_contiguous() and p.shape == first.shape for p in parts):
        return None
    size = first.numel() * first.element_size()
    storage = first.untyped_storage().data_ptr()
    for i, p in enumerate(parts[1:], 1):
        if p.untyped_storage().data_ptr() != storage or p.data_ptr() != first.data_ptr() + i * size:
            return None
    shape = (len(parts) * first.shape[0], *first.shape[1:])
    return first.as_strided(shape, first.stride())


def dense_jet(
    x: Jet,
    w: torch.Tensor,
    dw: torch.Tensor | None,
    b: torch.Tensor | None,
    db: torch.Tensor | None,
    transposed: bool = False,
) -> Jet:
    """y = W x + b along the path: y' = W x' + W' x + b', y'' = W x'' + 2 W' x'. Written
    into one output [y; y'; y'']: W against every block [x; x'; x''] (one product when the
    blocks are one tensor's), and W' added in place to y' (against x) and to y'' (against
    x', twice), so three products instead of five where the input is a stack. The value y
    is W x + b exactly as a product of x alone (the rows of a product do not depend on the
    rows beside them)."""
    z, z1, z2 = x
    if z2 is not None and z1 is None:
        z1 = torch.zeros_like(z)
    # a derivative may be smaller than its value (broadcast against it): widened here
    parts = [p if p.shape == z.shape else p.expand(z.shape) for p in (z, z1, z2) if p is not None]
    k = len(parts)
    moving_w = dw is not None
    k_out = (
        3 if k == 3 or (k == 2 and moving_w) else (2 if k == 2 or moving_w or db is not None else 1)
    )
    width = z.shape[-1]
    rows = z.numel() // max(1, width)
    wt = w if transposed else w.t()
    n_out = wt.shape[1]
    out = z.new_empty(k_out, *z.shape[:-1], n_out)
    flat = out.view(k_out * rows, n_out)
    stacked = _consecutive(parts)
    if stacked is not None:  # one product for every block
        torch.mm(stacked.reshape(k * rows, width), wt, out=flat[: k * rows])
    else:  # blocks apart: a product each, into the same output (no copy of the input)
        for i, part in enumerate(parts):
            torch.mm(part.reshape(rows, width), wt, out=flat[i * rows : (i + 1) * rows])
    if b is not None:
        out[0] += b
    if dw is not None:  # moving_w
        dwt = dw if transposed else dw.t()
        z_rows = parts[0].reshape(rows, width)
        if k == 1:
            torch.mm(z_rows, dwt, out=flat[rows : 2 * rows])  # y' = W' x
        else:
            flat[rows : 2 * rows].addmm_(z_rows, dwt)  # y' += W' x
            if k == 2:
                torch.mm(parts[1].reshape(rows, width), dwt, out=flat[2 * rows :])
                flat[2 * rows :].mul_(2)  # y'' = 2 W' x'
            else:
                flat[2 * rows :].addmm_(
                    parts[1].reshape(rows, width), dwt, alpha=2
                )  # y'' += 2 W' x'
    elif k_out > k:
        out[k:].zero_()
    if db is not None:
        out[1] += db
    return out[0], (out[1] if k_out > 1 else None), (out[2] if k_out > 2 else None)


Tracer.rules = JetRules
