"""The compositions :class:`mliscan.exactad.ExactForwardAD` runs in place of torch ops whose
forward-mode AD rule is wrong at second order or missing: each is the same function written
in ops whose derivative rules are right at every order (``exactad.REPLACED`` says why each
is replaced; ``tests/test_exactad.py`` measures torch's own rules). ``RULE_NAMES`` maps the
qualified name of each replaced torch function to its composition.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, TypeGuard, overload

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor

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


@overload
def _channel(param: Tensor, ndim: int) -> Tensor: ...
@overload
def _channel(param: Tensor | None, ndim: int) -> Tensor | None: ...
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


def differentiated(value: Any) -> bool:
    """Whether a tensor (or a list/tuple holding one) carries a derivative: a functorch
    wrapper (``torch.func.jvp``, ``grad``, ``vmap``), a forward-AD dual, or autograd."""
    if isinstance(value, Tensor):
        return (
            value.requires_grad
            or torch._C._functorch.is_functorch_wrapped_tensor(value)
            or fwad.unpack_dual(value).tangent is not None
        )
    if isinstance(value, (list, tuple)):
        return any(differentiated(v) for v in value)
    return False


def _batch_norm_core(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """Batch norm with batch statistics written out (running statistics, if any, updated by
    torch's own op as usual); eval mode is left to torch when its running statistics carry
    no derivative (its rule is right there) and written out when they may."""
    if not training:
        if running_mean is None or running_var is None:
            return NotImplemented  # torch raises its own error
        if not differentiated([running_mean, running_var]):
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


def _square_real(matrix: Tensor | None) -> TypeGuard[Tensor]:
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
    # torch's stubs lack linalg_slogdet (the type torch.linalg.slogdet returns at run time)
    return torch.return_types.linalg_slogdet(_sign_logabsdet(matrix))  # type: ignore[attr-defined]


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


RULE_NAMES: dict[str, Callable[..., Any]] = {
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
