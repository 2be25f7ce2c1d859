"""theta(alpha) = theta_0 + alpha (theta_T - theta_0), written into an unmodified module.

``TensorRoles`` is the one place that decides which tensors are interpolated:

* floating-point parameters and floating buffers: interpolated;
* batch-norm running statistics: re-estimated at each alpha (``batchnorm.py``), unless the
  BN mode is ``interpolate``;
* everything else (integer and bool buffers such as ``num_batches_tracked``): taken from
  the nearer endpoint, theta_0 for alpha < 0.5 and theta_T from alpha = 0.5 on, so that
  L(0) and L(1) are the endpoints' own losses (``differing_copied`` names those that differ);
* the second name of a tied weight (a language model's output head sharing the input
  embedding) is skipped: it is the same tensor, interpolated and counted once.

The distance metric uses the parameters only (batch-norm affine weights included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from mliscan.adapter import tied_aliases

BN_STAT_SUFFIXES = ("running_mean", "running_var")


@dataclass(frozen=True)
class TensorRoles:
    interpolated: tuple[str, ...]
    bn_stats: tuple[str, ...]
    copied: tuple[str, ...]
    parameters: tuple[str, ...]
    """Names entering the weight distance."""
    bn_owned: tuple[str, ...] = ()
    """Every BN module's running statistics (by ownership), whether re-estimated or, in the
    interpolate mode, interpolated: held fixed while differentiating along alpha."""

    @classmethod
    def of(cls, module: nn.Module, interpolate_bn_stats: bool = False) -> TensorRoles:
        # by ownership: the running statistics of the BN modules, under every name
        # a module is reached by (not every tensor whose name ends in running_mean)
        bn_stat_names = {
            f"{prefix}.{s}" if prefix else s
            for prefix, m in module.named_modules(remove_duplicate=False)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
            for s in BN_STAT_SUFFIXES
        }
        params = {n for n, _ in module.named_parameters()}
        aliases = tied_aliases(module)
        interpolated, bn_stats, copied = [], [], []
        for name, tensor in module.state_dict().items():
            if name in aliases:  # a tied weight's second name: same tensor, counted once
                continue
            if name in bn_stat_names and not interpolate_bn_stats:
                bn_stats.append(name)
            elif tensor.is_floating_point():
                interpolated.append(name)
            else:
                copied.append(name)
        floating_params = tuple(n for n in interpolated if n in params)
        owned = tuple(sorted(bn_stat_names))
        return cls(tuple(interpolated), tuple(bn_stats), tuple(copied), floating_params, owned)


# Below this many bytes of weights the difference theta_T - theta_0 is formed up front (one
# add per tensor and alpha); above it, memory wins and theta(alpha) is formed in place.
SMALL_MODEL_BYTES = 64 << 20


class Interpolator:
    """Holds theta_0 and theta_T and writes theta(alpha) into the module's own tensors.

    Memory discipline (large models): the endpoints are kept as given, in their stored dtype
    and without copies when they already sit on the compute device, and the working weights
    are the module's own tensors; nothing else of model size is held. ``apply(alpha)``
    computes theta_0 + alpha (theta_T - theta_0) per tensor in the module's dtype (float32
    or wider; for a bfloat16/float16 module in float32, then rounded), so at most one
    tensor-sized temporary exists at a time. The difference theta_T - theta_0 is formed as a
    whole (``delta``) up front for small models (under ``SMALL_MODEL_BYTES``), and otherwise
    only when a fast path asks for it.

    ``functional(alpha)`` returns the same weights as a differentiable function of a tensor
    alpha, for ``torch.func``. The endpoints are reproduced exactly: alpha = 0 copies
    theta_0, alpha = 1 copies theta_T.
    """

    def __init__(
        self,
        module: nn.Module,
        theta0: Mapping[str, torch.Tensor],
        theta1: Mapping[str, torch.Tensor],
        roles: TensorRoles,
        theta1_reader: Callable[[str], torch.Tensor] | None = None,
    ) -> None:
        self.module = module
        self.roles = roles
        self.theta1_reader = theta1_reader
        live = module.state_dict(keep_vars=True)
        self.targets = {k: live[k] for k in roles.interpolated + roles.copied}
        self._cast_delta: dict[str, torch.Tensor] | None = None
        for p in module.parameters():
            p.requires_grad_(False)
        self.t0: dict[str, torch.Tensor] = {}
        self.t1: dict[str, torch.Tensor] = {}
        for k in roles.interpolated:
            like = self.targets[k]
            self.t0[k] = _on_device(theta0[k], like)
            self.t1[k] = _on_device(theta1[k], like)
        self._delta: dict[str, torch.Tensor] | None = None
        size = sum(t.numel() * self.targets[k].element_size() for k, t in self.t0.items())
        wide = all(self.targets[k].dtype in (torch.float32, torch.float64) for k in self.t0)
        if wide and size <= SMALL_MODEL_BYTES:  # small models: one fused add per tensor
            _ = self.delta
        elif theta1_reader is not None:
            self._to_difference(theta1)
        self.c0 = {k: theta0[k] for k in roles.copied}
        self.c1 = {k: theta1[k] for k in roles.copied if k in theta1}
        self._side: int | None = None
        self._copy_side(0)

    @torch.no_grad()
    def _copy_side(self, side: int) -> None:
        """The non-interpolated tensors from theta_0 (side 0) or theta_T (side 1)."""
        if side == self._side:
            return
        source = self.c0 if side == 0 else self.c1
        for k in self.roles.copied:
            self.targets[k].copy_(source.get(k, self.c0[k]))
        self._side = side

    def differing_copied(self, module: nn.Module) -> list[str]:
        """Non-interpolated tensors whose values differ between the endpoints, except BN
        modules' own batch counters (not read by an eval-mode forward)."""
        counters = {
            f"{prefix}.num_batches_tracked" if prefix else "num_batches_tracked"
            for prefix, m in module.named_modules(remove_duplicate=False)
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        }
        return [
            k
            for k in self.roles.copied
            if k in self.c1 and k not in counters and not torch.equal(self.c0[k], self.c1[k])
        ]

    @torch.no_grad()
    def _to_difference(self, theta1: Mapping[str, torch.Tensor]) -> None:
        """Large models whose theta_T can be read again from disk: hold theta_T - theta_0
        instead of theta_T (in theta_T's own memory when the dtypes allow), so theta_0, the
        difference and the working weights are all that is held, the Gauss length included.
        alpha = 1 reads theta_T back, tensor by tensor, so the endpoint stays exact.

        The caller's theta_T tensors are consumed: they are also dropped from ``theta1`` (when
        it is a dict). A theta_T stored narrower than the working dtype (bf16 weights, float32
        module) cannot hold its own difference: all its tensors are dropped first (safetensors
        maps the file, and the mapping lives until its last tensor is gone), then each float32
        difference is formed from a fresh read of one tensor."""
        reread = []
        delta = {}
        for k in list(self.t1):
            b, dtype = self.t1.pop(k), self._difference_dtype(k)
            if isinstance(theta1, dict):
                theta1.pop(k, None)
            if b.dtype == dtype and b.is_floating_point():
                delta[k] = b.sub_(self.t0[k])
            else:
                reread.append(k)
            del b
        for k in reread:
            b = _on_device(self._read_theta1(k), self.targets[k])  # as theta_T was held
            delta[k] = _widened_difference(b, self.t0[k], self._difference_dtype(k))
        self._delta = {k: delta[k] for k in self.t0}
        self.t1 = {}

    def _read_theta1(self, k: str) -> torch.Tensor:
        """theta_T's tensor ``k`` read again from its file."""
        if self.theta1_reader is None:  # pragma: no cover - _to_difference is only called with one
            raise RuntimeError("theta_T must be re-read, but no reader was given")
        return self.theta1_reader(k)

    def _difference_dtype(self, k: str) -> torch.dtype:
        """The working dtype, but float32 for low-precision working weights."""
        dtype = self.targets[k].dtype
        return dtype if dtype in (torch.float32, torch.float64) else torch.float32

    @property
    def delta(self) -> dict[str, torch.Tensor]:
        """theta_T - theta_0 in the module's dtype (formed on first use, then kept)."""
        if self._delta is None:
            self._delta = {
                k: self.t1[k].to(self.targets[k].dtype) - self.t0[k].to(self.targets[k].dtype)
                for k in self.t0
            }
        return self._delta

    @property
    def working_dtype(self) -> torch.dtype:
        return next(iter(self.targets.values())).dtype

    def delta_in_working_dtype(self) -> dict[str, torch.Tensor]:
        """theta_T - theta_0 in the working weights' dtype (a tangent must match them): the
        held difference itself, or once cast when it is wider (low-precision working copy)."""
        delta, targets = self.delta, self.targets
        if all(delta[k].dtype == targets[k].dtype for k in delta):
            return delta
        if self._cast_delta is None:
            self._cast_delta = {k: v.to(targets[k].dtype) for k, v in delta.items()}
        return self._cast_delta

    def delta_for_jvp(self) -> dict[str, torch.Tensor]:
        """The tangent for nested jvp: the held difference when there is one, else formed
        now (one copy, freed by the caller after this alpha) for large models."""
        if self._delta is not None:
            return self.delta_in_working_dtype()
        return {
            k: self.t1[k].to(self.targets[k].dtype) - self.t0[k].to(self.targets[k].dtype)
            for k in self.t0
        }

    @torch.no_grad()
    def apply(self, alpha: float) -> None:
        self._copy_side(0 if alpha < 0.5 else 1)
        for k, target in self.targets.items():
            if k not in self.t0:
                continue
            a, b = self.t0[k], self.t1.get(k)
            if alpha == 0.0:
                target.copy_(a)
            elif alpha == 1.0:
                target.copy_(b if b is not None else self._read_theta1(k))
            elif self._delta is not None and target.dtype == self._delta[k].dtype:
                torch.add(a, self._delta[k], alpha=alpha, out=target)
            elif self._delta is not None:  # float32 difference, low-precision working copy
                target.copy_(torch.add(a.float(), self._delta[k], alpha=alpha))
            elif b is None:  # pragma: no cover - theta_T is dropped only for its difference
                raise RuntimeError(f"theta_T's {k} is neither held nor its difference")
            elif target.dtype in (torch.float32, torch.float64):
                # theta_0 + alpha (theta_T - theta_0), in place in the working tensor
                target.copy_(b).sub_(a).mul_(alpha).add_(a)
            else:  # low-precision working weights: compute in float32, then round once
                wide = b.float().sub_(a.float()).mul_(alpha).add_(a.float())
                target.copy_(wide)

    def functional(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._delta is not None:
            return {k: self.t0[k] + alpha * self._delta[k] for k in self.t0}
        out = {}
        for k, a in self.t0.items():
            dtype = self.targets[k].dtype
            a = a.to(dtype)
            out[k] = a + alpha * (self.t1[k].to(dtype) - a)
        return out


_SLICE = 1 << 24  # elements per slice when widening a large tensor (64 MiB in float32)


def _widened_difference(b: torch.Tensor, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``b - a`` computed and returned in ``dtype`` (exact widening of both, then one
    subtraction in ``dtype``), slice by slice, so that the only model-sized allocation is
    the result: no whole-tensor widened copy of ``a`` or ``b`` beside it."""
    out = torch.empty(b.shape, dtype=dtype, device=b.device)
    flat, fb, fa = out.view(-1), b.reshape(-1), a.reshape(-1)
    for i in range(0, flat.numel(), _SLICE):
        flat[i : i + _SLICE].copy_(fb[i : i + _SLICE]).sub_(fa[i : i + _SLICE])
    return out


def _on_device(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` on ``like``'s device; a float endpoint keeps its stored dtype unless it is wider
    than the working dtype (then it is narrowed once, as loading into the module would)."""
    if not t.is_floating_point():
        return t.to(like.device)
    if t.element_size() > like.element_size() or like.dtype == torch.float64:
        return t.to(device=like.device, dtype=like.dtype)
    return t.to(like.device)
