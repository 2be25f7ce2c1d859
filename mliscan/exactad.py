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

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.func import jvp
from torch.overrides import TorchFunctionMode

from mliscan.exactops import RULE_NAMES, differentiated

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
    func: rule for name, rule in RULE_NAMES.items() if (func := _resolve(name)) is not None
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
        if rule is not None and (differentiated(args) or differentiated(tuple(kwargs.values()))):
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
        out = jvp(velocity, (dict(primals),), (dict(tangents),))
        return out[0], out[1]


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


_RULE_NAMES = RULE_NAMES  # the compositions by qualified name (mliscan.exactops)
