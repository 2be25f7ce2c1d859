"""When a fast path may stand in for a module's own ``__call__``.

The truth along the path is the module's own ``__call__``: its ``forward``, its hooks (module
and global), its parametrizations, every submodule as often as the forward reaches it. The
engine's shortcuts (the lean Sequential loop, the layer-wise BN pass, the hand-written
second-order pass, the full-batch BN pass reused as the evaluation) replace that call with
code that knows what the standard layers compute. Such a shortcut is *provably* the same
function only under the conditions checked here:

* every module it interprets has an exact type it knows (a subclass that overrides
  ``forward`` is not its parent), or declares its own rule in the class that defines its
  forward (``taylor_forward`` beside ``forward``);
* no forward hook or pre-hook, module or global, and no parametrization or old-style weight
  hook (``weight_norm``, ``spectral_norm`` and pruning are pre-hooks);
* per-example layers really act per example (``Flatten(start_dim=0)`` does not).

Modules and parameters reached twice (one ``ReLU`` used twice, a shared ``Linear``, a tied
weight) are allowed: the shortcuts walk ``Sequential`` children as ``Sequential.forward``
does (without de-duplication) and look weights up by identity. On top of this proof, the
engine compares each shortcut's output with the module's own forward at run time
(``evaluate.PathEvaluator``), and falls back with a note on any difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeGuard

from torch import nn
from torch.nn.modules import module as _module_state
from torch.nn.utils import parametrize

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Layers that act on each example on its own: safe to run over any batch split, and over
# the whole data at once (the layer-wise BN pass). Exact types only.
PER_EXAMPLE_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Sigmoid,
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
)


def global_hooks() -> bool:
    """Whether any process-wide module forward hook or pre-hook is registered."""
    return bool(
        getattr(_module_state, "_global_forward_hooks", None)
        or getattr(_module_state, "_global_forward_pre_hooks", None)
    )


def plain_call(m: nn.Module) -> bool:
    """``m(x)`` is exactly ``type(m).forward(m, x)``: no hooks, no parametrization."""
    return not (
        m._forward_hooks
        or m._forward_pre_hooks
        or getattr(m, "_forward_hooks_with_kwargs", None)
        or parametrize.is_parametrized(m)
    )


def exact_type(m: nn.Module, types: Iterable[type]) -> bool:
    return type(m) in tuple(types)


def per_example(m: nn.Module) -> bool:
    """A known layer of exact type that maps each example on its own."""
    if not exact_type(m, PER_EXAMPLE_TYPES):
        return False
    return not (isinstance(m, nn.Flatten) and m.start_dim == 0)


def own_rule(m: nn.Module, name: str) -> bool:
    """The class that defines ``m``'s forward also defines the rule ``name`` (a subclass
    that overrides ``forward`` without restating the rule does not inherit it)."""
    for cls in type(m).__mro__:
        has_forward = "forward" in cls.__dict__
        has_rule = name in cls.__dict__
        if has_forward or has_rule:
            return has_forward and has_rule
    return False


def all_plain(module: nn.Module) -> bool:
    """No hook or parametrization anywhere in ``module``'s tree, and no global hook."""
    if global_hooks():
        return False
    return all(plain_call(m) for m in module.modules())


def sequential_children(module: nn.Module) -> list[nn.Module] | None:
    """The children of an exact ``nn.Sequential`` in call order (a child listed twice
    appears twice, as ``Sequential.forward`` calls it), else None."""
    if type(module) is not nn.Sequential:
        return None
    return list(module._modules.values())  # type: ignore[arg-type]


def lean_sequential(module: nn.Module) -> TypeGuard[nn.Sequential]:
    """The lean evaluation loop (children called in order, ReLU in place) computes the
    module's own call: an exact Sequential of per-example layers and BN, all plain."""
    children = sequential_children(module)
    if children is None or not all_plain(module):
        return False
    return all(per_example(c) or exact_type(c, BN_TYPES) for c in children)


def layerwise_bn(module: nn.Module) -> TypeGuard[nn.Sequential]:
    """The layer-wise BN pass (each per-example layer over the whole data, each BN layer
    over each batch) computes the module's train-mode pass: as :func:`lean_sequential`,
    with every BN child keeping running statistics and listed once."""
    if not lean_sequential(module):
        return False
    children = sequential_children(module) or []
    bns = [c for c in children if exact_type(c, BN_TYPES)]
    if any(c.running_mean is None for c in bns):  # type: ignore[union-attr]
        return False
    return len({id(c) for c in bns}) == len(bns)


def bn_pass_is_evaluation(module: nn.Module, calls: dict[int, int]) -> bool:
    """The full-batch train-mode BN pass's output equals the eval-mode forward with the
    statistics it stored when every BN module is of exact type, plain, and was called
    exactly once by that pass (``calls``: BN module id -> calls in the pass); modules
    without running statistics normalise by the whole batch in both."""
    if global_hooks():
        return False
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not exact_type(m, BN_TYPES) or not plain_call(m):
                return False
            if m.running_mean is not None and calls.get(id(m), 0) != 1:
                return False
    return True
