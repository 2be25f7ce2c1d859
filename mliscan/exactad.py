"""Exact first and second derivatives of a model's outputs along a straight line in weight space.

For logits z(theta) and the path theta(a) = theta0 + a * delta, :func:`second_order` returns
z' = J delta and z'' = d/da z' at a = 0 (for Gauss length and curvature along the path).

Nested ``torch.func.jvp`` gives both in one pass, but torch's forward-mode rules are wrong at
second order for some ops (they treat saved statistics such as layer norm's mean and inverse
deviation as constants) and missing for others. :class:`ExactForwardAD` is a
``TorchFunctionMode`` that, while active, routes each of those ops through a composition of
ops whose rules are right at every order; :data:`REPLACED` lists them with what was measured
against finite differences under torch 2.14 (``tests/test_exactad.py`` re-measures each, so a
torch release that fixes or breaks a rule is noticed). Nothing process-wide is changed: the
mode is a context manager that affects only the code run inside it, on its own thread.

An op with no forward rule that is not replaced (``F.grid_sample``, a custom
``autograd.Function`` without ``jvp``, ...) makes :func:`second_order` fall back to exact
reverse mode, and an op without a double backward to Richardson-extrapolated central
differences in float64; the method used is returned so the caller can record it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor
from torch.func import jvp
from torch.overrides import TorchFunctionMode

__all__ = [
    "REPLACED",
    "ExactForwardAD",
    "finite_differences",
    "nested_jvp",
    "reverse_second_order",
    "second_order",
]

# Step of the central differences along a (a in [0, 1] spans the whole path), halved
# FD_LEVELS - 1 times for Richardson extrapolation: truncation error O(h^6), rounding error
# about 1e-16 * |z| / (h / 4)^2 in float64, both near 1e-10 relative for smooth models.
FD_STEP = 1e-2
FD_LEVELS = 3

_WRONG = "wrong at second order: "
_MISSING = "no forward-AD rule: "

#: Every entry point :class:`ExactForwardAD` replaces (qualified name -> why). Values start with
#: "wrong at second order: " (nested jvp runs, z' is right, z'' is not: max |jvp - fd| /
#: max |fd| on random float64 inputs, torch 2.14.1 on CPU, over a few shapes) or
#: "no forward-AD rule: " (nested jvp raises NotImplementedError, naming the op).
REPLACED: dict[str, str] = {
    "torch.nn.functional.layer_norm": _WRONG
    + "the saved mean and inverse deviation carry no tangent, so z'' lacks their terms "
    "(off by 12-61 %); written out as centred * rsqrt(var + eps) * weight + bias",
    "torch.layer_norm": _WRONG + "as torch.nn.functional.layer_norm (off by 14-61 %)",
    "torch.native_layer_norm": _WRONG + "as torch.nn.functional.layer_norm (off by 6-24 %)",
    "torch.nn.functional.batch_norm": _WRONG
    + "with batch statistics (training=True) as layer norm (off by 9-25 %); eval mode keeps "
    "torch's op, right there, unless the running statistics may carry tangents (torch raises)",
    "torch.batch_norm": _WRONG + "as torch.nn.functional.batch_norm (off by 13 %)",
    "torch.nn.functional.instance_norm": _WRONG
    + "batch norm with per-sample batch statistics (off by 36-47 %)",
    "torch.instance_norm": _WRONG + "as torch.nn.functional.instance_norm (off by 35 %)",
    "torch._weight_norm": _MISSING
    + "_weight_norm_interface (parametrizations.weight_norm, utils.weight_norm); written out "
    "as v * (g / norm(v)); with dim=-1 torch's rule raises a tangent-shape error instead",
    "torch.nn.functional.scaled_dot_product_attention": _MISSING
    + "the fused kernels (_scaled_dot_product_flash_attention_for_cpu; flash and efficient "
    "attention on CUDA); written out as softmax(Q K^T scale + mask) V when dropout_p is 0",
    "torch.nn.functional.multi_head_attention_forward": _MISSING
    + "with need_weights=False it calls scaled_dot_product_attention inside itself, out of "
    "the mode's sight; run with need_weights=True (explicit softmax path), weights dropped",
    "torch.nn.functional.hardsigmoid": _MISSING
    + "first order works, but its rule calls hardsigmoid_backward, which has none; written "
    "out as clamp(x + 3, 0, 6) / 6",
    "torch._C._nn.hardsigmoid": _MISSING + "as torch.nn.functional.hardsigmoid",
    "torch.nn.functional.glu": _MISSING
    + "first order works, but its rule calls glu_jvp, which has none; written out as "
    "a * sigmoid(b)",
    "torch._C._nn.glu": _MISSING + "as torch.nn.functional.glu",
    "torch.nn.functional.embedding_bag": _MISSING
    + "_embedding_bag; written out as embedding rows summed, averaged or maxed per bag "
    "(max_norm falls through to torch)",
    "torch.cdist": _MISSING + "_cdist_forward; written out as norms of the differences",
    "torch.pdist": _MISSING + "_pdist_forward (also torch.nn.functional.pdist); as torch.cdist",
    "torch.linalg.det": _WRONG
    + "the LU factors it saves carry no tangent (off by 22-220 %); written out from "
    "linalg.lu_factor_ex, whose rule is right",
    "torch.det": _WRONG + "as torch.linalg.det (off by 12-55 %)",
    "torch.Tensor.det": _WRONG + "as torch.linalg.det (off by 25 %)",
    "torch.linalg.slogdet": _WRONG + "as torch.linalg.det (log|det| off by 81-100 %)",
    "torch.slogdet": _WRONG + "as torch.linalg.slogdet (off by 100 %)",
    "torch.Tensor.slogdet": _WRONG + "as torch.linalg.slogdet (off by 100 %)",
    "torch.logdet": _WRONG + "as torch.linalg.slogdet (off by 4-29 %)",
    "torch.Tensor.logdet": _WRONG + "as torch.linalg.slogdet (off by 100 %)",
    "torch.linalg.solve": _WRONG
    + "the LU factors it saves carry no tangent (off by 4-50 %); written out with "
    "linalg.lu_factor_ex and linalg.lu_solve",
}

_HALF = (torch.float16, torch.bfloat16)
_NEG_INF = float("-inf")


# --- the compositions ------------------------------------------------------------------------


def _standardize(x: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x - mean) / sqrt(var + eps) over ``dims`` (biased variance), with the mean and the
    inverse deviation; half-precision inputs are computed in float32, as torch does."""
    acc = x.float() if x.dtype in _HALF else x
    mean = acc.mean(dims, keepdim=True)
    centred = acc - mean
    rstd = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)
    return centred * rstd, mean, rstd


def _affine(out: Tensor, weight: Tensor | None, bias: Tensor | None, like: Tensor) -> Tensor:
    """``out * weight + bias`` cast to ``like``'s dtype (weight and bias already broadcastable)."""
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.to(like.dtype)


def _channel(param: Tensor | None, ndim: int) -> Tensor | None:
    """A per-channel (dimension 1) parameter shaped to broadcast against an ``ndim`` input."""
    return None if param is None else param.reshape((-1,) + (1,) * max(ndim - 2, 0))


def _layer_norm(
    input: Tensor,
    normalized_shape: Any,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    cudnn_enable: bool = True,
) -> Tensor:
    """Layer norm as centred * rsqrt(var + eps) * weight + bias."""
    return _native_layer_norm(input, normalized_shape, weight, bias, eps)[0]


def _native_layer_norm(
    input: Tensor,
    normalized_shape: Any,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.native_layer_norm``: the output with the mean and inverse deviation."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = tuple(range(-len(shape), 0))
    out, mean, rstd = _standardize(input, dims, eps)
    return _affine(out, weight, bias, input), mean, rstd


def _differentiated(value: Any) -> bool:
    """Whether a tensor (or a list/tuple holding one) carries a derivative: a functorch
    wrapper (``torch.func.jvp``, ``grad``, ``vmap``), a forward-AD dual, or autograd."""
    if isinstance(value, Tensor):
        return (
            value.requires_grad
            or torch._C._functorch.is_functorch_wrapped_tensor(value)
            or fwad.unpack_dual(value).tangent is not None
        )
    if isinstance(value, (list, tuple)):
        return any(_differentiated(v) for v in value)
    return False


def _batch_norm_core(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
) -> Tensor:
    """Batch norm with batch statistics written out (running statistics, if any, updated by
    torch's own op as usual); eval mode is left to torch when its running statistics carry
    no derivative (its rule is right there) and written out when they may."""
    if not training:
        if running_mean is None or running_var is None:
            return NotImplemented  # torch raises its own error
        if not _differentiated([running_mean, running_var]):
            return NotImplemented
        ndim = input.dim()
        acc = input.float() if input.dtype in _HALF else input
        out = (acc - _channel(running_mean, ndim)) * torch.rsqrt(_channel(running_var, ndim) + eps)
        return _affine(out, _channel(weight, ndim), _channel(bias, ndim), input)
    if running_mean is not None and running_var is not None:  # torch's in-place update
        torch.batch_norm(
            input.detach(), None, None, running_mean, running_var, True, momentum, eps, False
        )
    out = _standardize(input, (0, *range(2, input.dim())), eps)[0]
    ndim = input.dim()
    return _affine(out, _channel(weight, ndim), _channel(bias, ndim), input)


def _batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.batch_norm``."""
    if training:
        size = input.size()
        if size[0] * math.prod(size[2:]) == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {size}"
            )
    return _batch_norm_core(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _torch_batch_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    cudnn_enabled: bool = True,
) -> Tensor:
    """``torch.batch_norm`` (its own argument order)."""
    return _batch_norm_core(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _instance_norm_core(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """Instance norm with per-sample statistics written out; running statistics as batch norm."""
    if not use_input_stats:
        return _batch_norm_core(input, running_mean, running_var, weight, bias, False, 0.0, eps)
    if running_mean is not None and running_var is not None:  # torch's in-place update
        torch.instance_norm(
            input.detach(), None, None, running_mean, running_var, True, momentum, eps, False
        )
    out = _standardize(input, tuple(range(2, input.dim())), eps)[0]
    ndim = input.dim()
    return _affine(out, _channel(weight, ndim), _channel(bias, ndim), input)


def _instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.instance_norm``."""
    if use_input_stats and math.prod(input.size()[2:]) == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {input.size()}"
        )
    return _instance_norm_core(
        input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
    )


def _torch_instance_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
    cudnn_enabled: bool = True,
) -> Tensor:
    """``torch.instance_norm`` (its own argument order)."""
    return _instance_norm_core(
        input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
    )


def _weight_norm(v: Tensor, g: Tensor, dim: int = 0) -> Tensor:
    """``torch._weight_norm``: v * (g / norm(v)), the norm over every dimension but ``dim``
    (over all of v when dim is -1, as torch's ``norm_except_dim``)."""
    if dim == -1:
        norm = torch.linalg.vector_norm(v)
    else:
        keep = dim % v.dim()
        others = [d for d in range(v.dim()) if d != keep]
        norm = torch.linalg.vector_norm(v, dim=others, keepdim=True) if others else v.abs()
    return v * (g / norm)


_softmax: Callable[[Tensor, int], Tensor] = getattr(torch, "_safe_softmax", torch.softmax)


def _sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Scaled dot-product attention written out (torch's reference); rows with every key
    masked give zeros, as torch's kernels do. Dropout falls through to torch."""
    if dropout_p > 0.0 or (is_causal and attn_mask is not None):
        return NotImplemented
    factor = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    scores = (query @ key.transpose(-2, -1)) * factor
    if is_causal:
        size = (query.size(-2), key.size(-2))
        keep = torch.ones(size, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(keep.logical_not(), _NEG_INF)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(attn_mask.logical_not(), _NEG_INF)
        else:
            scores = scores + attn_mask
    return _softmax(scores, -1) @ value


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _multi_head_attention_forward(*args: Any, **kwargs: Any) -> Any:
    """``F.multi_head_attention_forward`` on its explicit-softmax path (need_weights=True),
    returning no weights when none were asked for."""
    bound = _MHA_SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    if bound.arguments["need_weights"]:
        return NotImplemented
    bound.arguments["need_weights"] = True
    out, _ = F.multi_head_attention_forward(*bound.args, **bound.kwargs)
    return out, None


def _hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """relu6(x + 3) / 6, as torch's kernel computes it."""
    out = (input + 3.0).clamp(0.0, 6.0) / 6.0
    return input.copy_(out) if inplace else out


def _glu(input: Tensor, dim: int = -1) -> Tensor:
    """a * sigmoid(b) for the two halves of ``input`` along ``dim``."""
    if input.dim() == 0 or input.size(dim) % 2:
        return NotImplemented  # torch raises its own error
    first, second = input.chunk(2, dim)
    return first * torch.sigmoid(second)


def _embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None = None,
    max_norm: float | None = None,
    norm_type: float = 2,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> Tensor:
    """Embedding rows reduced per bag with index_add (sum, mean) or scatter_reduce (max);
    empty bags give zeros. Invalid arguments and max_norm fall through to torch."""
    if max_norm is not None or mode not in ("sum", "mean", "max"):
        return NotImplemented
    if per_sample_weights is not None and mode != "sum":
        return NotImplemented
    if padding_idx is not None and not -weight.size(0) <= padding_idx < weight.size(0):
        return NotImplemented
    if input.dim() == 2 and offsets is None:
        bags, width = input.shape
        bag = torch.arange(bags, device=input.device).repeat_interleave(width)
    elif input.dim() == 1 and offsets is not None and offsets.dim() == 1:
        starts = offsets[:-1] if include_last_offset else offsets
        bags = starts.numel()
        position = torch.arange(input.numel(), device=input.device)
        bag = torch.bucketize(position, starts.to(position.dtype), right=True) - 1
        if include_last_offset:  # indices past the last offset belong to no bag
            bag = bag.masked_fill(position >= offsets[-1], -1)
    else:
        return NotImplemented
    index = input.reshape(-1)
    keep = bag >= 0
    if padding_idx is not None:
        keep = keep & (index != (padding_idx % weight.size(0)))
    rows = weight.index_select(0, index[keep])
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.reshape(-1)[keep].unsqueeze(-1)
    bag = bag[keep]
    out = weight.new_zeros((bags, weight.size(1)))
    if mode == "max":
        spread = bag.unsqueeze(-1).expand(-1, weight.size(1))
        return out.scatter_reduce(0, spread, rows, "amax", include_self=False)
    out = out.index_add(0, bag, rows)
    if mode == "mean":
        counts = torch.bincount(bag, minlength=bags).clamp_min(1)
        out = out / counts.unsqueeze(-1).to(out.dtype)
    return out


def _cdist(
    x1: Tensor,
    x2: Tensor,
    p: float = 2.0,
    compute_mode: str = "use_mm_for_euclid_dist_if_necessary",
) -> Tensor:
    """p-norm distance of every row of x1 to every row of x2, from the differences."""
    diff = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    return torch.linalg.vector_norm(diff, ord=p, dim=-1)


def _pdist(input: Tensor, p: float = 2.0) -> Tensor:
    """p-norm distance of every pair of rows i < j, in torch's (row-major) order."""
    if input.dim() != 2:
        return NotImplemented
    n = input.size(0)
    first, second = torch.triu_indices(n, n, 1, device=input.device)
    return torch.linalg.vector_norm(input[first] - input[second], ord=p, dim=-1)


def _lu_diagonal(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """The diagonal of U in P L U = matrix and the sign (+1/-1) of the permutation P."""
    lu, pivots, _ = torch.linalg.lu_factor_ex(matrix)
    unmoved = torch.arange(1, matrix.size(-1) + 1, device=pivots.device, dtype=pivots.dtype)
    swaps = (pivots != unmoved).sum(-1)
    parity = (1 - 2 * (swaps % 2)).to(matrix.dtype)
    return lu.diagonal(dim1=-2, dim2=-1), parity


def _square_real(matrix: Tensor | None) -> bool:
    """Whether the LU compositions apply (a real, non-empty batch of square matrices)."""
    return (
        matrix is not None
        and matrix.dim() >= 2
        and matrix.size(-1) == matrix.size(-2) > 0
        and not matrix.is_complex()
    )


def _det(A: Tensor | None = None, *, input: Tensor | None = None, out: Any = None) -> Tensor:
    """det(A) = sign(P) * prod(diag(U))."""
    matrix = A if A is not None else input
    if out is not None or not _square_real(matrix):
        return NotImplemented
    diagonal, parity = _lu_diagonal(matrix)
    return parity * diagonal.prod(-1)


def _sign_logabsdet(matrix: Tensor) -> tuple[Tensor, Tensor]:
    diagonal, parity = _lu_diagonal(matrix)
    return parity * torch.sign(diagonal).prod(-1), diagonal.abs().log().sum(-1)


def _linalg_slogdet(
    A: Tensor | None = None, *, input: Tensor | None = None, out: Any = None
) -> Any:
    """``torch.linalg.slogdet``: (sign, log|det|) from the LU factors."""
    matrix = A if A is not None else input
    if out is not None or not _square_real(matrix):
        return NotImplemented
    return torch.return_types.linalg_slogdet(_sign_logabsdet(matrix))


def _slogdet(input: Tensor | None = None, *, A: Tensor | None = None, out: Any = None) -> Any:
    """``torch.slogdet`` / ``Tensor.slogdet``."""
    matrix = input if input is not None else A
    if out is not None or not _square_real(matrix):
        return NotImplemented
    return torch.return_types.slogdet(_sign_logabsdet(matrix))


def _logdet(input: Tensor | None = None, *, A: Tensor | None = None) -> Tensor:
    """log(det): NaN for a negative determinant and -inf for zero, as torch."""
    matrix = input if input is not None else A
    if not _square_real(matrix):
        return NotImplemented
    sign, logabsdet = _sign_logabsdet(matrix)
    return logabsdet.masked_fill(sign < 0, float("nan"))


def _solve(A: Tensor, B: Tensor, *, left: bool = True, out: Any = None) -> Tensor:
    """``torch.linalg.solve`` through ``lu_factor_ex`` and ``lu_solve``."""
    if out is not None or not _square_real(A) or B.is_complex():
        return NotImplemented
    vector = B.dim() == 1 or (B.dim() == A.dim() - 1 and B.shape == A.shape[:-1])
    if vector and not left:
        return NotImplemented
    lu, pivots, _ = torch.linalg.lu_factor_ex(A)
    rhs = B.unsqueeze(-1) if vector else B
    if lu.dim() > rhs.dim():  # lu_solve broadcasts batches but wants matching ranks
        rhs = rhs.reshape((1,) * (lu.dim() - rhs.dim()) + rhs.shape)
    solution = torch.linalg.lu_solve(lu, pivots, rhs, left=left)
    return solution.squeeze(-1) if vector else solution


_RULE_NAMES: dict[str, Callable[..., Any]] = {
    "torch.nn.functional.layer_norm": _layer_norm,
    "torch.layer_norm": _layer_norm,
    "torch.native_layer_norm": _native_layer_norm,
    "torch.nn.functional.batch_norm": _batch_norm,
    "torch.batch_norm": _torch_batch_norm,
    "torch.nn.functional.instance_norm": _instance_norm,
    "torch.instance_norm": _torch_instance_norm,
    "torch._weight_norm": _weight_norm,
    "torch.nn.functional.scaled_dot_product_attention": _sdpa,
    "torch.nn.functional.multi_head_attention_forward": _multi_head_attention_forward,
    "torch.nn.functional.hardsigmoid": _hardsigmoid,
    "torch._C._nn.hardsigmoid": _hardsigmoid,
    "torch.nn.functional.glu": _glu,
    "torch._C._nn.glu": _glu,
    "torch.nn.functional.embedding_bag": _embedding_bag,
    "torch.cdist": _cdist,
    "torch.pdist": _pdist,
    "torch.linalg.det": _det,
    "torch.det": _det,
    "torch.Tensor.det": _det,
    "torch.linalg.slogdet": _linalg_slogdet,
    "torch.slogdet": _slogdet,
    "torch.Tensor.slogdet": _slogdet,
    "torch.logdet": _logdet,
    "torch.Tensor.logdet": _logdet,
    "torch.linalg.solve": _solve,
}


def _resolve(name: str) -> Any:
    """The object a qualified name such as ``torch.nn.functional.layer_norm`` refers to, or
    None when this torch lacks it."""
    target: Any = torch
    for part in name.split(".")[1:]:
        target = getattr(target, part, None)
        if target is None:
            return None
    return target


_RULES: dict[Any, Callable[..., Any]] = {
    func: rule for name, rule in _RULE_NAMES.items() if (func := _resolve(name)) is not None
}


class ExactForwardAD(TorchFunctionMode):
    """While active, each op of :data:`REPLACED` whose arguments carry a derivative (functorch
    jvp/grad/vmap wrappers, forward-AD duals or autograd) runs as a composition of ops whose
    derivative rules are right at every order; everything else runs unchanged.

    Use it around the differentiation only: ``with ExactForwardAD(): jvp(...)``. It changes
    no global state (torch's functions stay the same objects), and its presence also turns off
    the fused inference fast paths of ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer``, which have no forward-AD rule.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is not None and (_differentiated(args) or _differentiated(tuple(kwargs.values()))):
            out = rule(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)


# --- the three methods -------------------------------------------------------------------------

# torch's wording when nested jvp cannot run fn: an op without forward-mode rule, a custom
# autograd.Function without jvp or setup_context, running statistics given tangents, a
# forward-AD bug (a tangent of the wrong shape, torch._weight_norm with dim=-1), or an
# in-place update of a captured tensor that functorch cannot transform (BatchNorm's
# num_batches_tracked in training mode). Reverse mode handles all of them.
_FORWARD_RULE_MISSING = (
    "trying to use forward ad with",
    "forward mode ad",
    "functorch transforms",
    "setup_context",
    "cannot have forward grad defined",
    "is not differentiable with respect to argument",
    "would mutate a captured tensor",
    "trying to set a forward gradient",
)


def _missing_forward_rule(error: BaseException) -> bool:
    """Whether ``error`` says nested jvp cannot run (see :data:`_FORWARD_RULE_MISSING`)."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    text = str(error).lower()
    return any(phrase in text for phrase in _FORWARD_RULE_MISSING)


def _check(primals: Mapping[str, Tensor], tangents: Mapping[str, Tensor]) -> None:
    if primals.keys() != tangents.keys():
        missing = sorted(set(primals) ^ set(tangents))
        raise ValueError(f"primals and tangents must have the same keys; differing: {missing}")
    for name, value in primals.items():
        if tangents[name].shape != value.shape:
            raise ValueError(
                f"tangent {name} has shape {tuple(tangents[name].shape)}, "
                f"its primal {tuple(value.shape)}"
            )


def nested_jvp(
    fn: Callable[[dict[str, Tensor]], Tensor],
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
) -> tuple[Tensor, Tensor]:
    """(z', z'') by nested ``torch.func.jvp`` under :class:`ExactForwardAD`."""

    def velocity(weights: dict[str, Tensor]) -> Tensor:
        return jvp(fn, (weights,), (dict(tangents),))[1]

    with ExactForwardAD():
        return jvp(velocity, (dict(primals),), (dict(tangents),))


# Autograd nodes standing for a derivative that does not exist: a backward marked
# @once_differentiable (its output hangs off an Error node not connected to its inputs, so
# a second differentiation would silently miss it) or a C++ op without double backward.
_UNDIFFERENTIABLE_NODES = frozenset(
    {"torch::autograd::Error", "torch::autograd::DelayedError", "torch::autograd::NotImplemented"}
)


def _differentiable_again(tensor: Tensor) -> bool:
    """Whether the autograd graph behind ``tensor`` can be differentiated (no node of
    :data:`_UNDIFFERENTIABLE_NODES` anywhere in it)."""
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() in _UNDIFFERENTIABLE_NODES:
            return False
        stack.extend(child for child, _ in node.next_functions)
    return True


def reverse_second_order(
    fn: Callable[[dict[str, Tensor]], Tensor],
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
) -> tuple[Tensor, Tensor]:
    """(z', z'') exactly by reverse mode: with a scalar a and a dummy cotangent u,
    s = sum(u * fn(primals + a tangents)); z' = d/du ds/da and z'' = d/du d2s/da2 (double
    backward). Runs under :class:`ExactForwardAD`, with gradients enabled (also inside
    ``torch.inference_mode``, though tensors ``fn`` captures from there cannot be saved for
    backward). Raises RuntimeError when an op on the path has no double backward."""
    reference = next(iter(primals.values()))
    dtype = reference.dtype if reference.is_floating_point() else torch.get_default_dtype()
    with torch.inference_mode(False), torch.enable_grad(), ExactForwardAD():
        a = torch.zeros((), dtype=dtype, device=reference.device, requires_grad=True)
        weights = {
            k: p.detach().clone() + a * tangents[k].detach().clone() for k, p in primals.items()
        }
        z = fn(weights)
        zeros = torch.zeros_like(z).detach()
        if not z.requires_grad:
            return zeros, zeros.clone()
        u = torch.zeros_like(z).requires_grad_(True)
        (first,) = torch.autograd.grad((u * z).sum(), a, create_graph=True, allow_unused=True)
        if first is None:  # z does not depend on a
            return zeros, zeros.clone()
        if not _differentiable_again(first):
            raise RuntimeError("an op on the path has no double backward")
        (velocity,) = torch.autograd.grad(first, u, retain_graph=True)
        (second,) = torch.autograd.grad(first, a, create_graph=True, allow_unused=True)
        if second is None or not second.requires_grad:  # z is linear in a
            return velocity.detach(), zeros.clone()
        (acceleration,) = torch.autograd.grad(second, u, allow_unused=True)
    acceleration = zeros.clone() if acceleration is None else acceleration.detach()
    return velocity.detach(), acceleration


def _richardson(estimates: list[Tensor]) -> Tensor:
    """Richardson extrapolation of central differences at steps h, h/2, h/4, ... (error
    series in even powers of h)."""
    table = list(estimates)
    for level in range(1, len(table)):
        factor = 4.0**level
        table = [
            table[i + 1] + (table[i + 1] - table[i]) / (factor - 1.0) for i in range(len(table) - 1)
        ]
    return table[0]


def finite_differences(
    fn: Callable[[dict[str, Tensor]], Tensor],
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
    step: float = FD_STEP,
    levels: int = FD_LEVELS,
) -> tuple[Tensor, Tensor]:
    """(z', z'') by central differences along a in float64, Richardson-extrapolated over
    ``levels`` halvings of ``step``. The weights are cast to float64, so ``fn`` must accept
    float64 weights (cast its own inputs to the weights' dtype) and be deterministic;
    the results are float64."""
    base = {k: v.detach().to(torch.float64) for k, v in primals.items()}
    direction = {k: tangents[k].detach().to(torch.float64) for k in primals}

    def at(a: float) -> Tensor:
        return fn({k: base[k] + a * direction[k] for k in base}).detach().to(torch.float64)

    with torch.no_grad():
        centre = at(0.0)
        firsts, seconds = [], []
        for level in range(levels):
            h = step / 2.0**level
            ahead, behind = at(h), at(-h)
            firsts.append((ahead - behind) / (2.0 * h))
            seconds.append((ahead - 2.0 * centre + behind) / (h * h))
    return _richardson(firsts), _richardson(seconds)


def second_order(
    fn: Callable[[dict[str, Tensor]], Tensor],
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
) -> tuple[Tensor, Tensor, str]:
    """(z', z'', method): the first and second derivatives of ``fn(primals + a tangents)``
    along a at a = 0.

    ``fn`` maps a dict of floating weights to a tensor of logits (typically
    ``lambda w: torch.func.functional_call(module, w, (x,))``); ``tangents`` has the same keys
    and shapes. Methods, in order of preference:

    * ``"jvp"``: nested ``torch.func.jvp`` under :class:`ExactForwardAD`;
    * ``"reverse"``: when an op has no forward-mode rule, :func:`reverse_second_order`;
    * ``"finite-differences"``: when the reverse pass fails too (an op without double
      backward), :func:`finite_differences` in float64 (``fn`` must accept float64 weights and
      cast its inputs to their dtype; the results are then float64).

    A missing rule never raises: the next method is tried (nested jvp gives way only on
    torch's messages for a missing forward rule, see ``_FORWARD_RULE_MISSING``; reverse mode
    on any error but running out of memory); an error of ``fn`` itself is raised. ``fn`` may
    be evaluated several times, so it must be deterministic (no dropout in training mode);
    in training mode, batch norm updates its running statistics at each evaluation.
    """
    _check(primals, tangents)
    try:
        velocity, acceleration = nested_jvp(fn, primals, tangents)
        return velocity, acceleration, "jvp"
    except (NotImplementedError, RuntimeError) as error:
        if not _missing_forward_rule(error):
            raise
    try:
        velocity, acceleration = reverse_second_order(fn, primals, tangents)
        return velocity, acceleration, "reverse"
    except torch.OutOfMemoryError:
        raise
    except (NotImplementedError, RuntimeError):
        pass  # an op without double backward (or a tensor autograd cannot use)
    velocity, acceleration = finite_differences(fn, primals, tangents)
    return velocity, acceleration, "finite-differences"
