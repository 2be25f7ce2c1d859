"""theta(alpha) = theta_0 + alpha (theta_T - theta_0), written into an unmodified module.

``TensorRoles`` is the one place that decides which tensors are interpolated:

* floating-point parameters and floating buffers: interpolated;
* batch-norm running statistics: re-estimated at each alpha (``batchnorm.py``), unless the
  BN mode is ``interpolate``;
* everything else (integer buffers such as ``num_batches_tracked``): copied from theta_0.

The distance metric uses the parameters only (batch-norm affine weights included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

BN_STAT_SUFFIXES = ("running_mean", "running_var")


@dataclass(frozen=True)
class TensorRoles:
    interpolated: tuple[str, ...]
    bn_stats: tuple[str, ...]
    copied: tuple[str, ...]
    parameters: tuple[str, ...]
    """Names entering the weight distance."""

    @classmethod
    def of(cls, module: nn.Module, interpolate_bn_stats: bool = False) -> TensorRoles:
        bn_stat_names = {
            f"{prefix}.{s}" if prefix else s
            for prefix, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
            for s in BN_STAT_SUFFIXES
        }
        params = {n for n, _ in module.named_parameters()}
        interpolated, bn_stats, copied = [], [], []
        for name, tensor in module.state_dict().items():
            if name in bn_stat_names and not interpolate_bn_stats:
                bn_stats.append(name)
            elif tensor.is_floating_point():
                interpolated.append(name)
            else:
                copied.append(name)
        floating_params = tuple(n for n in interpolated if n in params)
        return cls(tuple(interpolated), tuple(bn_stats), tuple(copied), floating_params)


class Interpolator:
    """Holds theta_0, theta_T and their difference on the compute device.

    ``apply(alpha)`` writes theta(alpha) straight into the module's own tensors (no
    ``load_state_dict``, no copies of the module); ``functional(alpha)`` returns the same
    weights as a differentiable function of a tensor alpha, for ``torch.func``.
    The endpoints are reproduced exactly: alpha = 0 copies theta_0, alpha = 1 copies theta_T.
    """

    def __init__(
        self,
        module: nn.Module,
        theta0: Mapping[str, torch.Tensor],
        theta1: Mapping[str, torch.Tensor],
        roles: TensorRoles,
    ) -> None:
        self.module = module
        self.roles = roles
        live = module.state_dict(keep_vars=True)
        self.targets = {k: live[k] for k in roles.interpolated + roles.copied}
        for p in module.parameters():
            p.requires_grad_(False)
        self.t0: dict[str, torch.Tensor] = {}
        self.t1: dict[str, torch.Tensor] = {}
        self.delta: dict[str, torch.Tensor] = {}
        for k in roles.interpolated:
            like = self.targets[k]
            a = theta0[k].to(device=like.device, dtype=like.dtype)
            b = theta1[k].to(device=like.device, dtype=like.dtype)
            self.t0[k], self.t1[k], self.delta[k] = a, b, b - a
        with torch.no_grad():
            for k in roles.copied:
                self.targets[k].copy_(theta0[k])

    @torch.no_grad()
    def apply(self, alpha: float) -> None:
        for k, target in self.targets.items():
            if k not in self.t0:
                continue
            if alpha == 0.0:
                target.copy_(self.t0[k])
            elif alpha == 1.0:
                target.copy_(self.t1[k])
            else:
                torch.add(self.t0[k], self.delta[k], alpha=alpha, out=target)

    def functional(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: self.t0[k] + alpha * self.delta[k] for k in self.t0}
