"""Second-order forward mode for the common layers: z, z' and z'' in one pass.

Along the path the weights are linear in alpha (theta'' = 0), so each layer's value and its
first two alpha-derivatives follow from the layer's own rule. For a linear map y = W x + b,
with W' = delta_W, b' = delta_b:

    y   = W x + b
    y'  = W x' + W' x + b'
    y'' = W x'' + 2 W' x'

computed as two stacked products ([x; x'; x''] by W, [x; x'] by W'). An elementwise
activation s gives y' = s'(x) x' and y'' = s''(x) x'^2 + s'(x) x''. Batch norm in eval mode
is affine in x with fixed statistics (held fixed along alpha, as in the paper's code).

Modules built only from Sequential, Linear, Conv1d/2d, BatchNorm (eval), ReLU, Tanh, GELU,
Identity, Flatten and Dropout (eval) are handled here; anything else returns ``None`` from
:func:`supports` and the engine falls back to nested ``torch.func.jvp``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

Triple = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]

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
)


def supports(module: nn.Module, delta: Mapping[str, torch.Tensor]) -> bool:
    """True when every submodule has a rule here and BN statistics are not interpolated."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Sequential):
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
    z, dz, ddz = _run(module, "", delta, (x, None, None))
    return z, _or_zeros(dz, z), _or_zeros(ddz, z)


def _or_zeros(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if t is None else t


def _run(m: nn.Module, prefix: str, delta: Mapping[str, torch.Tensor], xs: Triple) -> Triple:
    if isinstance(m, nn.Sequential):
        for name, child in m.named_children():
            xs = _run(child, f"{prefix}{name}.", delta, xs)
        return xs
    if isinstance(m, nn.Linear):
        return _affine(
            xs,
            m.weight,
            m.bias,
            delta.get(prefix + "weight"),
            delta.get(prefix + "bias"),
            F.linear,
            bias_view=(-1,),
        )
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d

        def op(inp: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            return conv(inp, w, b, m.stride, m.padding, m.dilation, m.groups)

        view = (1, -1) + (1,) * (m.weight.ndim - 2)
        return _affine(
            xs,
            m.weight,
            m.bias,
            delta.get(prefix + "weight"),
            delta.get(prefix + "bias"),
            op,
            bias_view=view,
        )
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _batchnorm(m, prefix, delta, xs)
    x, dx, ddx = xs
    if isinstance(m, nn.ReLU):
        mask = (x > 0).to(x.dtype)
        return F.relu(x), _mul(dx, mask), _mul(ddx, mask)
    if isinstance(m, nn.Tanh):
        t = torch.tanh(x)
        s1 = 1 - t * t
        dd = None if dx is None else -2 * t * s1 * dx * dx
        return t, _mul(dx, s1), _add(dd, _mul(ddx, s1))
    if isinstance(m, nn.GELU):
        phi = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        s1 = cdf + x * phi
        s2 = phi * (2 - x * x)
        dd = None if dx is None else s2 * dx * dx
        return x * cdf, _mul(dx, s1), _add(dd, _mul(ddx, s1))
    if isinstance(m, nn.Flatten):
        return tuple(None if t is None else m(t) for t in xs)  # type: ignore[return-value]
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return xs
    raise TypeError(f"no second-order rule for {type(m).__name__}")


def _mul(t: torch.Tensor | None, s: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t * s


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _affine(xs: Triple, w, b, dw, db, op, bias_view) -> Triple:  # type: ignore[no-untyped-def]
    x, dx, ddx = xs
    n = x.shape[0]
    # One product of W with the stacked [x; x'; x''] (what is known to be zero is skipped).
    present = [t for t in (x, dx, ddx) if t is not None]
    outs = list(op(torch.cat(present), w).split(n)) if len(present) > 1 else [op(x, w)]
    y = outs.pop(0)
    wy1 = outs.pop(0) if dx is not None else None
    wy2 = outs.pop(0) if ddx is not None else None
    if b is not None:
        y = y + b.view(bias_view)
    y1, y2 = wy1, wy2
    if dw is not None:
        pair = [x] if dx is None else [x, dx]
        douts = op(torch.cat(pair), dw).split(n) if len(pair) > 1 else (op(x, dw),)
        y1 = _add(y1, douts[0])
        if dx is not None:
            y2 = _add(y2, 2 * douts[1])
    if db is not None:
        y1 = db.view(bias_view).expand_as(y) if y1 is None else y1 + db.view(bias_view)
    return y, y1, y2


def _batchnorm(m, prefix, delta, xs) -> Triple:  # type: ignore[no-untyped-def]
    x, dx, ddx = xs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = torch.rsqrt(m.running_var + m.eps).view(shape)
    centred = (x - m.running_mean.view(shape)) * scale
    if m.weight is not None:
        g = m.weight.view(shape)
        y = centred * g + m.bias.view(shape)
        dg = delta.get(prefix + "weight")
        db = delta.get(prefix + "bias")
        y1 = _mul(dx, scale * g)
        y2 = _mul(ddx, scale * g)
        if dg is not None:
            y1 = _add(y1, centred * dg.view(shape))
            if dx is not None:
                y2 = _add(y2, 2 * dx * scale * dg.view(shape))
        if db is not None:
            y1 = db.view(shape).expand_as(y) if y1 is None else y1 + db.view(shape)
        return y, y1, y2
    return centred, _mul(dx, scale), _mul(ddx, scale)
