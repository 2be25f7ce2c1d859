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

_LEAVES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.AvgPool2d,
)


Stack = tuple[torch.Tensor, int]
_RELU = nn.ReLU()


class Tracer:
    """The second-order rules, for a module's ``taylor_forward(t, st)``.

    ``st`` is a stack: (tensor of k blocks [x; x'; x''] of n rows, k). Every call leaves its
    input stack untouched (a block's input also feeds its shortcut)."""

    def __init__(self, root: nn.Module, delta: Mapping[str, torch.Tensor], n: int) -> None:
        self.names = {id(m): name for name, m in root.named_modules()}
        self.delta = delta
        self.n = n

    def _prefix(self, module: nn.Module) -> str:
        name = self.names[id(module)]
        return f"{name}." if name else ""

    def __call__(self, module: nn.Module, st: Stack) -> Stack:
        """A child module, by its own rule."""
        s, k = st
        return _run(module, self._prefix(module), self.delta, s, k, self.n, s.data_ptr(), self)

    def relu(self, st: Stack) -> Stack:
        s, k = st
        return _run(_RELU, "", self.delta, s, k, self.n, s.data_ptr(), self)

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
        dp = self.delta.get(self._prefix(module) + name)
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
        dc = self.delta.get(self._prefix(module) + name)
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


def supports(module: nn.Module, delta: Mapping[str, torch.Tensor]) -> bool:
    """True when every submodule has a rule here and BN statistics are not interpolated."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Sequential) or hasattr(m, "taylor_forward"):
            continue
        if not isinstance(m, _LEAVES):
            return False
        if isinstance(m, nn.GELU) and m.approximate != "none":
            return False
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode != "zeros":
            return False
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            prefix = f"{name}." if name else ""
            if m.running_mean is None or f"{prefix}running_mean" in delta:
                return False
    return True


def forward2(
    module: nn.Module, delta: Mapping[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, dz/dalpha, d2z/dalpha2) at the module's current weights (eval mode)."""
    n = x.shape[0]
    stack, _k = _run(module, "", delta, x, 1, n, x.data_ptr(), Tracer(module, delta, n))
    blocks = list(stack.split(n))
    while len(blocks) < 3:
        blocks.append(torch.zeros_like(blocks[0]))
    return blocks[0], blocks[1], blocks[2]


def _run(
    m: nn.Module,
    prefix: str,
    delta: Mapping[str, torch.Tensor],
    s: torch.Tensor,
    k: int,
    n: int,
    owner_ptr: int = 0,
    tracer: Tracer | None = None,
) -> tuple[torch.Tensor, int]:
    """``owner_ptr`` is the input data's storage pointer: that tensor is never written to."""
    if hasattr(m, "taylor_forward") and tracer is not None:
        return m.taylor_forward(tracer, (s, k))
    if isinstance(m, nn.Sequential):
        for name, child in m.named_children():
            s, k = _run(child, f"{prefix}{name}.", delta, s, k, n, owner_ptr, tracer)
        return s, k
    if isinstance(m, nn.Linear) and s.ndim == 2:
        return _linear(
            s, k, n, m.weight, m.bias, delta.get(prefix + "weight"), delta.get(prefix + "bias")
        )
    if isinstance(m, nn.Linear):
        return _affine(s, k, n, m.weight, m.bias, delta, prefix, F.linear, (-1,))
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d

        def op(inp: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return conv(inp, w, None, m.stride, m.padding, m.dilation, m.groups)

        view = (-1,) + (1,) * (m.weight.ndim - 2)
        return _affine(s, k, n, m.weight, m.bias, delta, prefix, op, view)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _batchnorm(m, prefix, delta, s, k, n)
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


def _affine(s, k, n, w, b, delta, prefix, op, view) -> tuple[torch.Tensor, int]:
    dw = delta.get(prefix + "weight")
    db = delta.get(prefix + "bias")
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


def _batchnorm(m, prefix, delta, s, k, n) -> tuple[torch.Tensor, int]:
    x = s[:n]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = torch.rsqrt(m.running_var + m.eps).view(shape)
    g = m.weight.view(shape) * inv if m.weight is not None else inv
    out = s.view(k, n, *s.shape[1:]) * g  # the linear part acts on every block
    shift = -m.running_mean.view(shape) * g
    if m.bias is not None:
        shift = shift + m.bias.view(shape)
    out[0] += shift
    dg = delta.get(prefix + "weight")
    db = delta.get(prefix + "bias")
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
