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
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp

from mliscan import batchnorm, metrics, taylor
from mliscan.adapter import Adapter
from mliscan.errors import UsageError
from mliscan.interpolate import Interpolator, TensorRoles
from mliscan.spec import BNSpec, EvalSpec

ProgressFn = Callable[[int, float, float], None]
# Largest output of one evaluation batch (bytes), per device type: bounds the batch size of
# models with large outputs (language-model logits), whose loss also needs a same-sized copy.
OUTPUT_BYTES_BUDGET = {"cpu": 64 << 20, "cuda": 1 << 30, "mps": 256 << 20}
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


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
        return self._prepare(self.base[index])  # type: ignore[index]


@dataclass
class Curve:
    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None
    gauss_integrand: np.ndarray | None
    """Per-alpha Gauss-map speed, averaged over examples."""
    timing: dict[str, float] = field(default_factory=dict)


class PathEvaluator:
    """Evaluates one straight path between two state dicts of the same module."""

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
        self.bn_layers = adapter.bn_modules(module) if self.roles.bn_stats else []
        self._batch_size: int | None = spec.batch_size
        self._bn_chunk: int | bool | None = False  # False: not chosen yet
        self._bn_output: object | None = None  # the full-batch BN pass's output (the evaluation)
        self._cast_delta: dict[str, torch.Tensor] | None = None
        # the evaluation forward: the module, or its torch.compile'd wrapper (same weights)
        self.forward: Callable[[torch.Tensor], object] = (
            torch.compile(module)  # type: ignore[assignment]
            if spec.compile
            else (batchnorm.lean_forward(module) or module)
        )
        # The hand-written second-order pass is used when every layer has a rule and the
        # adapter's logits are the module output; nested jvp is the general fallback.
        self.fast_gauss = (
            spec.gauss_method != "jvp"
            and type(adapter).logits is Adapter.logits
            and taylor.supports(module, self.interp.t0)
        )

    @property
    def _working_dtype(self) -> torch.dtype:
        return next(iter(self.interp.targets.values())).dtype

    @property
    def batch_size(self) -> int:
        """The evaluation batch size: given, or the fastest of a few candidates (probed once)."""
        if self._batch_size is None:
            self._batch_size = self.spec.batch_size or self._probe_batch_size()
        return self._batch_size

    @torch.inference_mode()
    def _probe_batch_size(self) -> int:
        n = len(self.data)
        candidates = sorted(
            {min(c, n) for c in self.adapter.eval_batch_candidates}
            | ({n} if n <= self.adapter.eval_batch_candidates[-1] * 2 else set())
        )
        # Memory: a batch's output (a language model's logits: tokens x vocabulary) must fit
        # the budget, so large-vocabulary models get small batches.
        out = self.module(self.data.inputs[:1])
        per_example = out.numel() * out.element_size()
        budget = OUTPUT_BYTES_BUDGET.get(self.data.inputs.device.type, OUTPUT_BYTES_BUDGET["cpu"])
        cap = max(1, budget // max(1, per_example))
        candidates = [c for c in candidates if c <= cap] or [min(cap, n)]
        if len(candidates) == 1:
            return candidates[0]
        best, best_rate = candidates[-1], float("inf")
        for bs in candidates:
            x = self.data.inputs[: min(n, 2 * bs)]
            self.module(x[:bs])  # warm-up
            t = time.perf_counter()
            for s in batchnorm.batch_slices(len(x), bs):
                self.module(x[s])
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            rate = (time.perf_counter() - t) / len(x)
            if rate < best_rate:
                best, best_rate = bs, rate
        return best

    # ---- one alpha -----------------------------------------------------------------------
    def set_alpha(self, alpha: float) -> None:
        """Write theta(alpha) and its batch-norm statistics into the module."""
        self.interp.apply(alpha)
        self._reestimate_bn()

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Write arbitrary weights (for the interpolated tensors) and re-estimate BN."""
        with torch.no_grad():
            for k in self.roles.interpolated:
                self.interp.targets[k].copy_(state[k])
        self._reestimate_bn()

    def _reestimate_bn(self) -> None:
        self._bn_output = None
        if not self.bn_layers:
            return
        try:
            self._bn_output = batchnorm.reestimate(
                self.module, self.bn_layers, self.data.inputs, self.spec.bn, chunk=self.bn_chunk
            )
        except torch.cuda.OutOfMemoryError:
            if self.bn_chunk is not None:
                raise
            self._bn_chunk = self.batch_size  # same statistics, computed in chunks
            torch.cuda.empty_cache()
            warnings.warn(
                "CUDA out of memory in the full-batch BN pass: the same statistics are now "
                f"computed in chunks of {self._bn_chunk} (slower)",
                stacklevel=2,
            )
            self._reestimate_bn()

    @property
    def bn_chunk(self) -> int | None:
        """Full-data BN statistics: None for one full-batch pass (it is also the evaluation),
        else the chunk size of the chunked computation (data too large to hold as a batch)."""
        if self._bn_chunk is False:
            self._bn_chunk = self._choose_bn_chunk()
        return self._bn_chunk  # type: ignore[return-value]

    @torch.inference_mode()
    def _choose_bn_chunk(self) -> int | None:
        if not self.bn_layers or self.spec.bn.mode != "exact" or self.spec.bn.batch_size:
            return None
        if not isinstance(self.data.inputs, torch.Tensor):
            return self.batch_size  # streamed data is never held whole
        # Peak memory of one full-batch pass: a few live activations of the largest layer.
        largest = [0]

        def hook(_m: nn.Module, _a: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                largest[0] = max(largest[0], out.numel() * out.element_size())

        leaves = [m for m in self.module.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(hook) for m in leaves]
        try:
            self.module(self.data.inputs[:2])
        finally:
            for h in hooks:
                h.remove()
        n = len(self.data)
        peak = 4 * largest[0] * n // min(2, n)
        return None if peak <= activation_budget(self.data.inputs.device) else self.batch_size

    @torch.inference_mode()
    def loss_and_accuracy(self) -> tuple[float, float | None]:
        """Mean per-example loss over the data (float64 sums), and accuracy."""
        total = torch.zeros((), dtype=torch.float64, device=self.data.inputs.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.data.inputs.device)
        has_acc = True
        merged, self._bn_output = self._bn_output, None
        if merged is not None:  # the full-batch BN pass already evaluated every example
            parts = [(merged, self.data.targets)]
        else:
            parts = (
                (self.forward(self.data.inputs[s]), self.data.targets[s])
                for s in batchnorm.batch_slices(len(self.data), self.batch_size)
            )
        for out, y in parts:
            total += self.adapter.loss(out, y).double().sum()
            ok = self.adapter.correct(out, y)
            if ok is None:
                has_acc = False
            else:
                correct += ok.sum().double()
        n = len(self.data)
        return float(total) / n, (float(correct) / n if has_acc else None)

    def gauss_integrand(self, alpha: float) -> float:
        """Average over examples of ||d/dalpha (z'/||z'||)|| at ``alpha`` (BN stats fixed).

        Call after :meth:`set_alpha` (``alpha``): the module holds theta(alpha)."""
        inputs = self.data.inputs
        if self.spec.gauss_examples is not None:
            inputs = inputs[: self.spec.gauss_examples]
        # theta_T - theta_0 for nested jvp: held by small models, formed here (one copy, freed
        # after this alpha) for large ones
        delta = None if self.fast_gauss else self._delta_for_jvp()
        total, rows = 0.0, 0
        for s in batchnorm.batch_slices(len(inputs), self.batch_size):
            vel, acc = self._derivatives(inputs[s], delta)
            total += float(metrics.gauss_integrand(vel, acc).sum())
            rows += vel.shape[0]
        return total / rows

    def _delta_for_jvp(self) -> dict[str, torch.Tensor]:
        interp = self.interp
        if interp._delta is not None:
            return self._delta_in_working_dtype()
        return {
            k: interp.t1[k].to(interp.targets[k].dtype) - interp.t0[k].to(interp.targets[k].dtype)
            for k in interp.t0
        }

    def _delta_in_working_dtype(self) -> dict[str, torch.Tensor]:
        """theta_T - theta_0 in the working weights' dtype (the tangent must match them): the
        held difference itself, or once cast when it is wider (low-precision working copy)."""
        delta, targets = self.interp.delta, self.interp.targets
        if all(delta[k].dtype == targets[k].dtype for k in delta):
            return delta
        if self._cast_delta is None:
            self._cast_delta = {k: v.to(targets[k].dtype) for k, v in delta.items()}
        return self._cast_delta

    def _derivatives(
        self, x: torch.Tensor, delta: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z', z'') of the logits of a batch at the module's current weights: the
        second-order pass, or nested jvp.

        theta(alpha) is linear in alpha, so z' = J(theta) delta and z'' is the derivative of
        that along delta: nested ``torch.func.jvp`` over the weights themselves, with the
        module's working tensors as primals and delta as the tangent at both levels. No copy
        of the weights is made (the duals wrap existing tensors), which keeps the Gauss length
        of large models at about one extra copy of their weights (delta)."""
        if self.fast_gauss:
            with torch.inference_mode():
                _, vel, acc = taylor.forward2(self.module, self._delta_in_working_dtype(), x)
            return vel, acc
        assert delta is not None
        weights = {k: self.interp.targets[k].detach() for k in self.interp.t0}

        def logits(w: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.adapter.logits(functional_call(self.module, w, (x,)))

        def velocity(w: dict[str, torch.Tensor]) -> torch.Tensor:
            return jvp(logits, (w,), (delta,))[1]

        # a module may switch to kernels that support forward-mode AD (hub transformers)
        context = getattr(self.module, "forward_ad_context", contextlib.nullcontext)
        with context():
            vel, acc = jvp(velocity, (weights,), (delta,))
        return vel, acc

    @torch.inference_mode()
    def loss_accuracy_gauss(self) -> tuple[float, float | None, float]:
        """Loss, accuracy and mean Gauss integrand from one second-order pass (fast path)."""
        self._bn_output = None
        n = len(self.data)
        limit = n if self.spec.gauss_examples is None else min(n, self.spec.gauss_examples)
        total = torch.zeros((), dtype=torch.float64, device=self.data.inputs.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.data.inputs.device)
        g_total = torch.zeros((), dtype=torch.float64, device=self.data.inputs.device)
        has_acc = True
        for s in batchnorm.batch_slices(n, self.batch_size):
            z, vel, acc = taylor.forward2(
                self.module, self._delta_in_working_dtype(), self.data.inputs[s]
            )
            y = self.data.targets[s]
            total += self.adapter.loss(z, y).double().sum()
            ok = self.adapter.correct(z, y)
            if ok is None:
                has_acc = False
            else:
                correct += ok.sum().double()
            keep = max(0, min(s.stop, limit) - s.start)
            if keep:
                g_total += metrics.gauss_integrand(vel[:keep], acc[:keep]).sum()
        return float(total) / n, (float(correct) / n if has_acc else None), float(g_total) / limit

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """``--amp``: autocast for the BN and loss passes (a no-op when off)."""
        if self.spec.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.spec.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.data.targets.device.type, dtype=dtype)

    def _oom_retry(self, fn: Callable[[], T]) -> T:
        """Run an evaluation; on CUDA out-of-memory halve the batch size and run it again."""
        while True:
            try:
                return fn()
            except torch.cuda.OutOfMemoryError:
                if self.batch_size <= 1:
                    raise
                self._batch_size = max(1, self.batch_size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"CUDA out of memory: evaluation batch size halved to {self._batch_size}",
                    stacklevel=2,
                )

    # ---- several alphas per pass -----------------------------------------------------------
    @property
    def can_vmap(self) -> bool:
        """Alphas can share a pass when no statistics must be re-estimated between them, or
        when they are the data's own statistics in one full batch: each alpha's batch-norm
        layers then normalise the whole data by its statistics inside the vmapped pass."""
        return not self.bn_layers or self._bn_in_pass

    @property
    def _bn_in_pass(self) -> bool:
        return (
            bool(self.bn_layers)
            and self.spec.bn.mode == "exact"
            and self.spec.bn.batch_size is None
            and self.bn_chunk is None
            and batchnorm._all_bn_keep_stats(self.module)
        )

    @contextlib.contextmanager
    def _batch_statistics(self) -> Iterator[None]:
        """BN layers normalise each forward's batch by its own statistics (no buffers)."""
        saved = [(m, m.running_mean, m.running_var) for m in self.bn_layers]
        try:
            for m, _, _ in saved:
                m.running_mean = None
                m.running_var = None
            yield
        finally:
            for m, mean, var in saved:
                m.running_mean = mean
                m.running_var = var

    @torch.inference_mode()
    def loss_and_accuracy_chunk(
        self, alphas: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Loss and accuracy at several alphas in one vmapped pass per batch."""
        from torch.func import vmap

        dtype = self._working_dtype
        a = torch.tensor(list(alphas), dtype=dtype, device=self.data.inputs.device)
        totals = torch.zeros(len(alphas), dtype=torch.float64, device=a.device)
        correct = torch.zeros(len(alphas), dtype=torch.float64, device=a.device)
        has_acc = True

        def outputs(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.module, self.interp.functional(alpha), (x,))

        batched = vmap(outputs, in_dims=(0, None))
        in_pass = self._bn_in_pass
        size = None if in_pass else self.batch_size  # BN in the pass: the whole data at once
        context = self._batch_statistics() if in_pass else contextlib.nullcontext()
        with context:
            for s in batchnorm.batch_slices(len(self.data), size):
                out = batched(a, self.data.inputs[s])  # [K, B, ...]
                y = self.data.targets[s]
                for j in range(len(alphas)):
                    totals[j] += self.adapter.loss(out[j], y).double().sum()
                    ok = self.adapter.correct(out[j], y)
                    if ok is None:
                        has_acc = False
                    else:
                        correct[j] += ok.sum().double()
        n = len(self.data)
        losses = (totals / n).cpu().numpy()
        accs = (correct.double() / n).cpu().numpy() if has_acc else None
        return losses, accs

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
        fused_gauss = g is not None and self.fast_gauss and self.spec.amp == "off"
        for i, alpha in enumerate(alphas):
            t0 = time.perf_counter()
            with self.autocast():
                self.set_alpha(float(alpha))
            t1 = time.perf_counter()
            if fused_gauss:
                # one second-order pass gives the loss, accuracy and Gauss integrand
                losses[i], acc, g[i] = self._oom_retry(self.loss_accuracy_gauss)
                t2 = t1
            else:
                with self.autocast():
                    losses[i], acc = self._oom_retry(self.loss_and_accuracy)
                t2 = time.perf_counter()
                if g is not None:
                    g[i] = self._oom_retry(lambda a=float(alpha): self.gauss_integrand(a))
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
                chunk_loss, chunk_acc = self.loss_and_accuracy_chunk(chunk)
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


def activation_budget(device: torch.device) -> int:
    """Bytes a full-batch pass may hold: half the free GPU memory, or on the CPU the data
    memory budget (``$MLISCAN_DATA_MEMORY``, else a quarter of physical memory)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2
    from mliscan.data import data_memory_budget

    return data_memory_budget()


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
        if type(adapter).prepare_targets is not Adapter.prepare_targets:
            raise UsageError(
                f"--arch {adapter.name} derives its targets from the inputs, which cannot be "
                "streamed; use --data-limit to fit the data in memory"
            )
        lazy = StreamedInputs(inputs, adapter, device, dtype)
        return PreparedData(lazy, targets.to(device))  # type: ignore[arg-type]
    x = adapter.prepare_inputs(inputs).to(device=device)
    if x.is_floating_point():  # token ids stay integers
        x = x.to(dtype)
    x = x.contiguous()
    return PreparedData(x, adapter.prepare_targets(x, targets.to(device)))


def default_bn() -> BNSpec:
    return BNSpec()
