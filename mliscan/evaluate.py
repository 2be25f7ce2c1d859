"""The interpolation loop: loss, accuracy and the Gauss-length integrand along a path.

The loop knows nothing of tables or plots: it reports progress through a callback. For each
alpha it writes theta(alpha) into the module, re-estimates batch-norm statistics, evaluates
the loss over the data in eval mode, and (optionally) the Gauss-length integrand.

Gauss length. The logit vector z(alpha) of each example is differentiated exactly in forward
mode (nested ``torch.func.jvp``): the inner jvp gives z', the outer z''. As in the paper's
code, with batch norm the statistics are re-estimated at each alpha and then *held fixed*
while differentiating: their own dependence on alpha is ignored. With ReLU the derivatives
are those of the active linear piece (the kinks are ignored, as in the paper's autodiff), so a
finite-difference estimate legitimately disagrees there; with smooth activations they agree.

The interface evaluates a list of alphas per call so that faster strategies (several alphas
per pass) can replace the loop without changing callers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mliscan import batchnorm, taylor
from mliscan.adapter import Adapter
from mliscan.bnpolicy import BNPolicy
from mliscan.errors import UsageError
from mliscan.interpolate import Interpolator, TensorRoles
from mliscan.resources import ResourcePolicy
from mliscan.spec import EvalSpec
from mliscan.strategies import FusedSecondOrder, Parts, PerAlpha, VmappedChunks

ProgressFn = Callable[[int, float, float], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; a named device must exist here."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps) and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: this machine has no usable CUDA GPU (torch "
                f"{torch.__version__}); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: there are {torch.cuda.device_count()} CUDA devices "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    if device.type == "mps" and not mps_ok:
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


@dataclass
class PreparedData:
    """Inputs shaped for the module and placed on the device once, reused at every alpha
    (or, for data streamed from disk, a :class:`StreamedInputs` that prepares each batch)."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])


class StreamedInputs:
    """Inputs too large for memory: a file-backed CPU tensor whose batches are shaped, cast
    and moved to the device when sliced. Only the batch in use is resident (the OS pages
    the file in and out), so evaluation needs memory for one batch, not the dataset."""

    def __init__(
        self, base: torch.Tensor, adapter: Adapter, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.base = base
        self.adapter = adapter
        self.device = device
        self.dtype = dtype
        first = self._prepare(base[:1])
        self.shape = (base.shape[0], *first.shape[1:])

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter.prepare_inputs(x).to(device=self.device)
        return (x.to(self.dtype) if x.is_floating_point() else x).contiguous()

    def __len__(self) -> int:
        return int(self.base.shape[0])

    def __getitem__(self, index: object) -> torch.Tensor:
        return self._prepare(self.base[index])


@dataclass
class Curve:
    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None
    gauss_integrand: np.ndarray | None
    """Per-alpha Gauss-map speed, averaged over examples."""
    timing: dict[str, float] = field(default_factory=dict)


class PathEvaluator:
    """Evaluates one straight path between two state dicts of the same module.

    Composes the interpolator (theta(alpha) into the module), the BN policy
    (:class:`~mliscan.bnpolicy.BNPolicy`), the resource policy (batch size, out-of-memory
    halving: :class:`~mliscan.resources.ResourcePolicy`) and an evaluation strategy
    (:mod:`mliscan.strategies`: per alpha, fused second-order, or vmapped chunks); ``run``
    is the loop over alpha."""

    def __init__(
        self,
        adapter: Adapter,
        module: nn.Module,
        theta0: dict[str, torch.Tensor],
        theta1: dict[str, torch.Tensor],
        data: PreparedData,
        spec: EvalSpec,
        theta1_reader: Callable[[str], torch.Tensor] | None = None,
    ) -> None:
        self.adapter = adapter
        self.module = module.eval()
        self.spec = spec
        self.data = data
        self.roles = TensorRoles.of(module, interpolate_bn_stats=spec.bn.mode == "interpolate")
        self.interp = Interpolator(module, theta0, theta1, self.roles, theta1_reader)
        self.resources = ResourcePolicy(
            module, data.inputs, adapter.eval_batch_candidates, spec.batch_size
        )
        layers = adapter.bn_modules(module) if self.roles.bn_stats else []
        self.bn = BNPolicy(module, layers, data.inputs, spec.bn, self.resources)
        # the evaluation forward: the module, or its torch.compile'd wrapper (same weights)
        self.forward: Callable[[torch.Tensor], object] = (
            torch.compile(module) if spec.compile else (batchnorm.lean_forward(module) or module)
        )
        # The hand-written second-order pass is used when every layer has a rule and the
        # adapter's logits are the module output; nested jvp is the general fallback.
        # A model whose logits are a subset of its output (a language model's Gauss
        # positions) has the pass when its own rules compute just those (taylor_positions).
        self.fast_gauss = (
            spec.gauss_method != "jvp"
            and (not adapter.custom_logits or getattr(module, "taylor_positions", False))
            and taylor.supports(module, self.interp.t0)
        )
        parts = Parts(
            adapter,
            module,
            self.forward,
            data.inputs,
            data.targets,
            self.interp,
            self.bn,
            self.resources,
            spec.gauss_examples,
        )
        self.per_alpha = PerAlpha(parts, second_order=self.fast_gauss)
        self.fused = FusedSecondOrder(parts)
        self.vmapped = VmappedChunks(parts)

    @property
    def batch_size(self) -> int:
        """The evaluation batch size: given, or the fastest of a few candidates (probed once)."""
        return self.resources.batch_size

    @property
    def bn_chunk(self) -> int | None:
        return self.bn.chunk

    # ---- one alpha -----------------------------------------------------------------------
    def set_alpha(self, alpha: float) -> None:
        """Write theta(alpha) and its batch-norm statistics into the module."""
        self.interp.apply(alpha)
        self.bn.reestimate()

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Write arbitrary weights (for the interpolated tensors) and re-estimate BN."""
        with torch.no_grad():
            for k in self.roles.interpolated:
                self.interp.targets[k].copy_(state[k])
        self.bn.reestimate()

    def loss_and_accuracy(self) -> tuple[float, float | None]:
        """Mean per-example loss over the data (float64 sums), and accuracy."""
        return self.per_alpha.loss_and_accuracy()

    def gauss_integrand(self, alpha: float | None = None) -> float:
        """Mean Gauss integrand at the module's current weights (call after ``set_alpha``)."""
        return self.per_alpha.gauss_integrand()

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """``--amp``: autocast for the BN and loss passes (a no-op when off)."""
        if self.spec.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.spec.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.data.targets.device.type, dtype=dtype)

    @property
    def can_vmap(self) -> bool:
        """Alphas can share a pass when no statistics must be re-estimated between them, or
        when they are the data's own statistics in one full batch."""
        return not self.bn.active or self.bn.in_pass

    # ---- the loop ------------------------------------------------------------------------
    def run(
        self, alphas: Sequence[float], gauss: bool | None = None, progress: ProgressFn | None = None
    ) -> Curve:
        gauss = self.spec.gauss if gauss is None else gauss
        if self.spec.alpha_chunk > 1 and self.can_vmap and not gauss:
            return self._run_chunked(alphas, progress)
        losses = np.empty(len(alphas))
        accs: list[float | None] = []
        g = np.empty(len(alphas)) if gauss else None
        timing = {"bn": 0.0, "evaluate": 0.0, "gauss": 0.0}
        fused = g is not None and self.fast_gauss and self.spec.amp == "off"
        if fused and self.adapter.custom_logits:  # a model's own rules: checked once first
            self.set_alpha(float(alphas[0]))
            fused = self.per_alpha.check_rules()
        retry = self.resources.retry
        for i, alpha in enumerate(alphas):
            t0 = time.perf_counter()
            with self.autocast():
                self.set_alpha(float(alpha))
            t1 = time.perf_counter()
            if fused:
                # one second-order pass gives the loss, accuracy and Gauss integrand
                losses[i], acc, g[i] = retry(self.fused.evaluate)
                t2 = t1
            else:
                with self.autocast():
                    losses[i], acc = retry(self.per_alpha.loss_and_accuracy)
                t2 = time.perf_counter()
                if g is not None:
                    g[i] = retry(self.per_alpha.gauss_integrand)
            accs.append(acc)
            t3 = time.perf_counter()
            timing["bn"] += t1 - t0
            timing["evaluate"] += t2 - t1
            timing["gauss"] += t3 - t2
            if progress is not None:
                progress(i, float(alpha), float(losses[i]))
        accuracy = None if any(a is None for a in accs) else np.asarray(accs, dtype=np.float64)
        return Curve(np.asarray(alphas, dtype=np.float64), losses, accuracy, g, timing)

    def _run_chunked(self, alphas: Sequence[float], progress: ProgressFn | None) -> Curve:
        losses: list[float] = []
        accs: list[float] | None = []
        t0 = time.perf_counter()
        k = self.spec.alpha_chunk
        for start in range(0, len(alphas), k):
            chunk = [float(a) for a in alphas[start : start + k]]
            with self.autocast():
                chunk_loss, chunk_acc = self.vmapped.evaluate(chunk)
            losses.extend(chunk_loss.tolist())
            if chunk_acc is None or accs is None:
                accs = None
            else:
                accs.extend(chunk_acc.tolist())
            if progress is not None:
                for i in range(start, start + len(chunk)):
                    progress(i, float(alphas[i]), losses[i])
        timing = {"bn": 0.0, "evaluate": time.perf_counter() - t0, "gauss": 0.0}
        acc_arr = None if accs is None else np.asarray(accs)
        return Curve(
            np.asarray(alphas, dtype=np.float64), np.asarray(losses), acc_arr, None, timing
        )


def alpha_grid(n: int) -> np.ndarray:
    """linspace(0, 1, n) in float64 (Section 4: n = 50)."""
    if n < 2:
        raise ValueError("at least 2 alphas are needed (the endpoints)")
    return np.linspace(0.0, 1.0, n)


def prepare_data(
    adapter: Adapter,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    streamed: bool = False,
) -> PreparedData:
    if streamed:
        if adapter.targets_from_inputs:
            raise UsageError(
                f"--arch {adapter.name} derives its targets from the inputs, which cannot be "
                "streamed; use --data-limit to fit the data in memory"
            )
        lazy = StreamedInputs(inputs, adapter, device, dtype)
        return PreparedData(lazy, targets.to(device))
    x = adapter.prepare_inputs(inputs).to(device=device)
    if x.is_floating_point():  # token ids stay integers
        x = x.to(dtype)
    x = x.contiguous()
    return PreparedData(x, adapter.prepare_targets(x, targets.to(device)))
