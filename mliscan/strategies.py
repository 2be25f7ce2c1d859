"""Evaluation strategies: how the loss, accuracy and Gauss integrand of one or several alphas
are computed once the module holds theta(alpha) and its BN statistics.

* :class:`PerAlpha`: one evaluation pass per alpha (the full-batch BN pass's output is
  reused when there is one); the Gauss integrand by the second-order pass or nested jvp.
* :class:`FusedSecondOrder`: one second-order forward pass (``taylor.forward2``) gives the
  loss, the accuracy and the Gauss integrand together.
* :class:`VmappedChunks`: several alphas in one ``torch.func.vmap`` pass per batch.

All three sum per-example losses and correct predictions through :class:`Totals` (float64),
the one loss/accuracy loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from mliscan import exactad, metrics, taylor
from mliscan.adapter import Adapter, gauss_positions
from mliscan.batchnorm import batch_slices
from mliscan.bnpolicy import BNPolicy
from mliscan.interpolate import Interpolator
from mliscan.resources import ResourcePolicy


class Totals:
    """Sums of per-example losses and correct predictions over batches, in float64, for
    ``k`` alphas at once (the same loop for every strategy)."""

    def __init__(self, adapter: Adapter, device: torch.device, k: int = 1) -> None:
        self.adapter = adapter
        self.loss = torch.zeros(k, dtype=torch.float64, device=device)
        self.correct = torch.zeros(k, dtype=torch.float64, device=device)
        self.has_accuracy = True

    def add(self, out: Any, y: torch.Tensor, j: int = 0) -> None:
        self.loss[j] += self.adapter.loss(out, y).double().sum()
        ok = self.adapter.correct(out, y)
        if ok is None:
            self.has_accuracy = False
        else:
            self.correct[j] += ok.sum().double()

    def means(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        loss = (self.loss / n).cpu().numpy()
        return loss, ((self.correct / n).cpu().numpy() if self.has_accuracy else None)


@dataclass
class Parts:
    """What every strategy reads: the model, the data and the policies."""

    adapter: Adapter
    module: nn.Module
    forward: Callable[[torch.Tensor], Any]
    inputs: torch.Tensor
    targets: torch.Tensor
    interp: Interpolator
    bn: BNPolicy
    resources: ResourcePolicy
    gauss_examples: int | None

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])

    @property
    def device(self) -> torch.device:
        return self.targets.device

    def batches(self, size: int | None = None) -> Iterable[slice]:
        return batch_slices(self.n, self.resources.batch_size if size is None else size)

    def delta(self) -> dict[str, torch.Tensor]:
        """theta_T - theta_0 in the working weights' dtype (the tangent must match them)."""
        return self.interp.delta_in_working_dtype()


class PerAlpha:
    """One evaluation pass per alpha; the Gauss integrand separately."""

    def __init__(self, parts: Parts, second_order: bool) -> None:
        self.p = parts
        self.second_order = second_order
        """True: the hand-written second-order pass; False: nested jvp."""
        self.methods: set[str] = set()
        """How the Gauss integrand of the current alpha was computed (see ``derivatives``)."""
        self._wide: nn.Module | None = None

    @torch.inference_mode()
    def loss_and_accuracy(self) -> tuple[float, float | None]:
        p = self.p
        totals = Totals(p.adapter, p.device)
        merged = p.bn.take_output()
        if merged is not None:  # the full-batch BN pass already evaluated every example
            totals.add(merged, p.targets)
        else:
            for s in p.batches():
                totals.add(p.forward(p.inputs[s]), p.targets[s])
        loss, acc = totals.means(p.n)
        return float(loss[0]), (None if acc is None else float(acc[0]))

    def gauss_integrand(self) -> float:
        """Average over examples of ||d/dalpha (z'/||z'||)|| at the module's weights (BN
        statistics held fixed)."""
        p = self.p
        inputs = p.inputs if p.gauss_examples is None else p.inputs[: p.gauss_examples]
        # theta_T - theta_0 for nested jvp: held by small models, formed here (one copy, freed
        # after this alpha) for large ones
        delta = p.delta() if self.second_order else p.interp.delta_for_jvp()
        total, rows = 0.0, 0
        size = p.resources.batch_size
        if self.second_order:
            size = p.resources.second_order_batch_size(
                lambda x: taylor.forward2(p.module, delta, x, _positions(p, x))
            )
        for s in batch_slices(len(inputs), size):
            vel, acc = self.derivatives(inputs[s], delta)
            total += float(metrics.gauss_integrand(vel, acc).sum())
            rows += vel.shape[0]
        return total / rows

    def derivatives(
        self, x: torch.Tensor, delta: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z', z'') of the logits of a batch at the module's current weights.

        theta(alpha) is linear in alpha, so z' = J(theta) delta and z'' is the derivative of
        that along delta: nested ``torch.func.jvp`` over the weights themselves, with the
        module's working tensors as primals and delta as the tangent at both levels. No copy
        of the weights is made (the duals wrap existing tensors)."""
        p = self.p
        if self.second_order:
            positions = _positions(p, x)  # a sequence model: its Gauss positions only
            with torch.inference_mode():
                _, vel, acc = taylor.forward2(p.module, delta, x, positions)
            self.methods.add("second-order")
            if positions is None:
                return vel, acc
            return tuple(v.reshape(-1, v.shape[-1]) for v in (vel, acc))  # type: ignore[return-value]
        # BN running statistics (by ownership) are held fixed while differentiating, whether
        # re-estimated (the paper's convention) or interpolated (--bn-mode interpolate).
        owned = set(p.interp.roles.bn_owned)
        keys = [k for k in p.interp.t0 if k not in owned]
        weights = {k: p.interp.targets[k].detach() for k in keys}
        tangents = {k: delta[k] for k in keys}

        def logits(w: dict[str, torch.Tensor]) -> torch.Tensor:
            dtype = next(iter(w.values())).dtype if w else x.dtype
            if dtype == torch.float64 and p.interp.working_dtype != torch.float64:
                # the finite-difference fallback widens the weights: a float64 copy of the
                # module (its buffers at this alpha) runs them
                module = self._widened()
                inp = x.double() if x.is_floating_point() else x
                return p.adapter.logits(functional_call(module, w, (inp,))).double()
            return p.adapter.logits(functional_call(p.module, w, (x,)))

        # a module may switch to kernels that support forward-mode AD (hub transformers)
        context = getattr(p.module, "forward_ad_context", contextlib.nullcontext)
        with context():
            vel, acc, method = exactad.second_order(logits, weights, tangents)
        self.methods.add(method)
        return vel.to(x.dtype if x.is_floating_point() else vel.dtype), acc.to(vel.dtype)

    def _widened(self) -> nn.Module:
        """A float64 copy of the module at the current alpha (made once per alpha, only
        for the finite-difference fallback)."""
        import copy

        if self._wide is None:
            self._wide = copy.deepcopy(self.p.module).double()
        return self._wide

    def new_alpha(self) -> None:
        self.methods = set()
        self._wide = None


class FusedSecondOrder:
    """Loss, accuracy and mean Gauss integrand from one second-order pass."""

    def __init__(self, parts: Parts) -> None:
        self.p = parts
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None
        """With ``keep``: for the first ``keep`` examples of the latest ``evaluate``, the
        outputs z it computed the loss from and z as the rules return it (a sequence
        model's at its Gauss positions), for the run-time check against the module's own
        forward."""

    @torch.inference_mode()
    def evaluate(self, keep: int = 0) -> tuple[float, float | None, float]:
        p = self.p
        p.bn.take_output()  # not needed: this pass evaluates every example itself
        kept: list[torch.Tensor] = []
        kept_own: list[torch.Tensor] = []
        limit = p.n if p.gauss_examples is None else min(p.n, p.gauss_examples)
        totals = Totals(p.adapter, p.device)
        g_total = torch.zeros((), dtype=torch.float64, device=p.device)
        delta = p.delta()
        rows = 0
        size = p.resources.second_order_batch_size(
            lambda x: taylor.forward2(p.module, delta, x, _positions(p, x), full_values=True)
        )
        for s in p.batches(size):
            x = p.inputs[s]
            positions = _positions(p, x)  # a sequence model: derivatives at its Gauss positions
            own: list[torch.Tensor] | None = [] if keep > 0 else None
            z, vel, acc = taylor.forward2(p.module, delta, x, positions, True, own)
            totals.add(z, p.targets[s])
            if own:  # z of the loss, and the rules' own z (at the Gauss positions)
                kept.append(z[:keep])
                kept_own.append(own[0][:keep])
                keep -= len(kept[-1])
            rows_kept = max(0, min(s.stop, limit) - s.start)
            if rows_kept:
                if positions is not None:  # one logit vector per example and position
                    vel, acc = vel[:rows_kept].flatten(0, -2), acc[:rows_kept].flatten(0, -2)
                else:
                    vel, acc = vel[:rows_kept], acc[:rows_kept]
                g_total += metrics.gauss_integrand(vel, acc).sum()
                rows += vel.shape[0]
        self.first = (torch.cat(kept), torch.cat(kept_own)) if kept else None
        loss, accuracy = totals.means(p.n)
        return (
            float(loss[0]),
            None if accuracy is None else float(accuracy[0]),
            float(g_total) / rows,
        )


def _positions(p: Parts, x: torch.Tensor) -> torch.Tensor | None:
    """A sequence model's Gauss positions (its second-order pass computes them only)."""
    return gauss_positions(x.shape[1], x.device) if p.adapter.custom_logits else None


def select(out: Any, j: int) -> Any:
    """Entry ``j`` of a batched output (a tensor, or a dict, ModelOutput, tuple of them)."""
    if isinstance(out, torch.Tensor):
        return out[j]
    if isinstance(out, dict):
        return {k: select(v, j) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return tuple(select(v, j) for v in out)
    return out


class VmappedChunks:
    """Loss and accuracy at several alphas in one vmapped pass per batch."""

    def __init__(self, parts: Parts) -> None:
        self.p = parts
        self.first: Any = None
        """The first batch's outputs of the latest ``evaluate`` (``keep_first``), for the
        run-time check against the module's own forward."""

    @torch.inference_mode()
    def evaluate(
        self, alphas: Sequence[float], keep_first: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        from torch.func import vmap

        p = self.p
        dtype = p.interp.working_dtype
        a = torch.tensor(list(alphas), dtype=dtype, device=p.device)
        totals = Totals(p.adapter, p.device, len(alphas))

        def outputs(alpha: torch.Tensor, x: torch.Tensor) -> Any:
            return functional_call(p.module, p.interp.functional(alpha), (x,))

        batched = vmap(outputs, in_dims=(0, None))
        in_pass = p.bn.in_pass
        size = p.n if in_pass else None  # BN in the pass: the whole data at once
        context = p.bn.batch_statistics() if in_pass else contextlib.nullcontext()
        self.first = None
        with context:
            for s in p.batches(size):
                out = batched(a, p.inputs[s])  # [K, B, ...]
                if keep_first and self.first is None:
                    self.first = out
                y = p.targets[s]
                for j in range(len(alphas)):
                    totals.add(select(out, j), y, j)
        return totals.means(p.n)
