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
import functools
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mliscan import batchnorm, taylor
from mliscan.adapter import Adapter, gauss_positions
from mliscan.bnpolicy import BNPolicy
from mliscan.errors import UsageError
from mliscan.interpolate import Interpolator, TensorRoles
from mliscan.record import Note
from mliscan.resources import ResourcePolicy
from mliscan.spec import EvalSpec
from mliscan.strategies import FusedSecondOrder, Parts, PerAlpha, VmappedChunks, select

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


def rank_device(name: str, local_rank: int, cuda: bool) -> str:
    """The device of one torchrun rank: ``auto`` and a bare ``cuda`` mean this rank's own
    GPU, ``cuda:{LOCAL_RANK}`` (every rank on GPU 0 would share one device); an explicit
    ``cuda:N`` or another device is kept as given. No process state is changed: the device
    is named on every tensor, not set with ``torch.cuda.set_device``."""
    if cuda and name in ("auto", "cuda"):
        return f"cuda:{local_rank}"
    return name


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

    def __getitem__(self, index: int | slice | torch.Tensor) -> torch.Tensor:
        return self._prepare(self.base[index])


@dataclass
class Curve:
    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None
    gauss_integrand: np.ndarray | None
    """Per-alpha Gauss-map speed, averaged over examples."""
    timing: dict[str, float] = field(default_factory=dict)
    paths: dict[str, list[str]] = field(default_factory=dict)
    """Which path computed each number: ``loss`` and ``gauss`` per alpha (see
    :data:`PATHS`)."""
    notes: list[Note] = field(default_factory=list)
    """What the evaluation found about the model (a fast path refused at run time, ...)."""


# The paths that can compute a number (recorded per alpha in Curve.paths, --json "paths"):
PATHS = {
    "module": "the module's own forward (its __call__: hooks, parametrizations)",
    "bn-pass": "the full-batch BN re-estimation pass, proven equal to the eval forward",
    "lean-sequential": "an exact nn.Sequential of standard layers, children called in order",
    "compiled": "torch.compile of the module (--compile)",
    "second-order": "the hand-written second-order pass (mliscan.taylor)",
    "vmapped": "torch.func.vmap over alphas of functional_call (the module's own forward)",
    "jvp": "nested torch.func.jvp over functional_call, exact forward AD (mliscan.exactad)",
    "reverse": "reverse-mode double differentiation over functional_call (no forward-AD rule)",
    "finite-differences": "central finite differences in float64 (no exact rule at all)",
}
# The run-time check: at the first CHECKED_ALPHAS alphas of every scan, each fast path's
# logits on PROBE_EXAMPLES examples are compared with the module's own forward; relative
# to the largest logit, they must agree within the dtype's tolerance (float64 allows for
# models that run a part in float32 inside, e.g. Llama's RMS norm in transformers; a path
# that computes another function differs by far more).
CHECKED_ALPHAS = 2
PROBE_EXAMPLES = 8
CHECK_RTOL = {torch.float64: 1e-6, torch.float32: 1e-4}
CHECK_RTOL_LOW = 5e-2  # float16, bfloat16, autocast


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
        layers = adapter.bn_modules(module) if self.roles.bn_stats else []
        batch_bn = batchnorm.batch_dependent(module)
        self.resources = ResourcePolicy(
            module, data.inputs, adapter.eval_batch_candidates, spec.batch_size, bool(batch_bn)
        )
        self.bn = BNPolicy(module, layers, data.inputs, spec.bn, self.resources)
        self.notes: list[Note] = []
        if batch_bn:
            self.notes.append(
                Note(
                    "batch-statistics",
                    f"{', '.join(batch_bn[:3])} normalise by the batch (track_running_stats="
                    f"False): every alpha is evaluated on the whole data ({len(data)} examples) "
                    "as one batch",
                )
            )
        differing = self.interp.differing_copied(module)
        if differing:
            self.notes.append(
                Note(
                    "integer-tensors",
                    f"{len(differing)} integer/bool tensors differ between the endpoints "
                    f"({', '.join(differing[:4])}{', ...' if len(differing) > 4 else ''}): "
                    "alphas below 0.5 use theta_0's values, the others theta_T's",
                )
            )
        # The evaluation forward: the module's own call, or a shortcut that provably equals
        # it (mliscan.contract) and is checked against it at run time.
        lean = None if spec.compile else batchnorm.lean_forward(module)
        self.forward: Callable[[torch.Tensor], object] = (
            torch.compile(module) if spec.compile else (lean or module)
        )
        self.forward_path = (
            "compiled" if spec.compile else ("lean-sequential" if lean else "module")
        )
        # The hand-written second-order pass where every module has a rule and the adapter's
        # logits are the module output (or a sequence model's own rules compute its Gauss
        # positions: taylor_positions); nested jvp is the general path.
        self.fast_gauss = (
            spec.gauss_method != "jvp"
            and (not adapter.custom_logits or getattr(module, "taylor_positions", False))
            and taylor.supports(module, self.interp.t0)
        )
        self.parts = Parts(
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
        self.per_alpha = PerAlpha(self.parts, second_order=self.fast_gauss)
        self.fused = FusedSecondOrder(self.parts)
        self.vmapped = VmappedChunks(self.parts)
        self._second_truth: torch.Tensor | None = None
        """The module's own logits on the probe examples, for the fused pass's check."""

    @property
    def batch_size(self) -> int:
        """The evaluation batch size: given, or chosen once from memory (no timing)."""
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
        when they are the data's own statistics in one full batch; and when no integer
        tensor changes along the path."""
        if self.notes and self.interp.differing_copied(self.module):
            return False
        return not self.bn.active or self.bn.in_pass

    # ---- the run-time check of the fast paths ------------------------------------------------
    def _tolerance(self) -> float:
        dtype = self.interp.working_dtype
        if self.spec.amp != "off":
            return CHECK_RTOL_LOW
        return CHECK_RTOL.get(dtype, CHECK_RTOL_LOW)

    def _agree(self, name: str, fast: torch.Tensor, truth: torch.Tensor, alpha: float) -> bool:
        """Whether a fast path's logits are the module's own; if not, a warning and a note."""
        fast, truth = fast.detach().double(), truth.detach().double()
        if fast.shape == truth.shape:
            same_nonfinite = bool((torch.isfinite(fast) == torch.isfinite(truth)).all())
            ok = torch.isfinite(truth)
            diff = float((fast[ok] - truth[ok]).abs().max()) if bool(ok.any()) else 0.0
            scale = max(1.0, float(truth[ok].abs().max()) if bool(ok.any()) else 1.0)
            if same_nonfinite and diff <= self._tolerance() * scale:
                return True
            detail = f"max difference {diff:.3g} at logits up to {scale:.3g}"
        else:
            detail = f"shape {tuple(fast.shape)} against {tuple(truth.shape)}"
        note = (
            f"the {name} path disagrees with {type(self.module).__name__}'s own forward at "
            f"alpha = {alpha:g} ({detail}); from there on the module's own call computes it"
        )
        warnings.warn(note, stacklevel=3)
        self.notes.append(Note("fast-path", note))
        return False

    @torch.inference_mode()
    def check_fast_paths(self, alpha: float, fused: bool, gauss: bool) -> bool:
        """Compare every fast path in use with the module's own forward on a probe batch
        (call after ``set_alpha``); a path that disagrees is dropped from here on. Returns
        whether the fused second-order pass may still be used."""
        adapter, module = self.adapter, self.module
        second = gauss and self.per_alpha.second_order
        merged = self.bn.output is not None and self.bn.reuse_output
        if self.forward is module and not merged and not second:
            return fused  # no fast path in use: nothing to check
        x = self.data.inputs[:PROBE_EXAMPLES]
        with self.autocast():
            truth = adapter.logits(module(x))
            if self.forward is not module:
                fast = adapter.logits(self.forward(x))
                if not self._agree(self.forward_path, fast, truth, alpha):
                    self.forward = self.parts.forward = module
                    self.forward_path = "module"
            out = self.bn.output
            if out is not None and self.bn.reuse_output:
                if self.resources.whole:  # the model's output depends on the whole batch
                    rows, full = out, adapter.logits(module(self.data.inputs))
                else:
                    rows, full = _rows(out, len(x)), truth
                if not self._agree("bn-pass", adapter.logits(rows), full, alpha):
                    self.bn.reuse_output = False
        if second and fused and self.interp.working_dtype in CHECK_RTOL:
            # the fused pass's own first rows are compared after it (_fused_agrees): no
            # second pass over the probe examples
            self._second_truth = truth
        elif second and self.interp.working_dtype in CHECK_RTOL:
            positions = None
            if adapter.custom_logits:
                positions = gauss_positions(x.shape[1], x.device)
            z, _, _ = taylor.forward2(module, self.parts.delta(), x, positions)
            if not self._agree("second-order", z.reshape(-1, z.shape[-1]), truth, alpha):
                self.per_alpha.second_order = False
                self.fast_gauss = fused = False
        return fused and self.per_alpha.second_order

    def _fused_agrees(self, alpha: float) -> bool:
        """The fused pass's logits on the probe examples against the module's own (taken by
        ``check_fast_paths`` at this alpha); a disagreement drops the second-order path."""
        truth, self._second_truth = self._second_truth, None
        first = self.fused.first
        if truth is None or first is None:
            return True
        values, own = first  # z of the loss, and z as the rules return it
        for fast in (self.adapter.logits(values), own.reshape(-1, own.shape[-1])):
            if not self._agree("second-order", fast, truth, alpha):
                self.per_alpha.second_order = False
                self.fast_gauss = False
                return False
        return True

    def _vmapped_agrees(self, chunk: list[float]) -> bool:
        """The vmapped pass's logits at the chunk's first two alphas against the module's
        own forward (after this alpha's own BN re-estimation) on the probe examples."""
        first, adapter = self.vmapped.first, self.adapter
        for j, alpha in enumerate(chunk[:CHECKED_ALPHAS]):
            self.set_alpha(alpha)
            with torch.inference_mode(), self.autocast():
                out = select(first, j)
                n = min(PROBE_EXAMPLES, _batch_rows(out))
                truth = adapter.logits(self.module(self.data.inputs[:n]))
                fast = adapter.logits(_rows(out, n))
            if not self._agree("vmapped", fast, truth, alpha):
                return False
        return True

    def loss_path(self) -> str:
        """The path that computed the current alpha's loss (after ``set_alpha``)."""
        if self.bn.output is not None and self.bn.reuse_output:
            return "bn-pass"
        return self.forward_path

    # ---- the loop ------------------------------------------------------------------------
    def run(
        self,
        alphas: Sequence[float] | np.ndarray,
        gauss: bool | None = None,
        progress: ProgressFn | None = None,
        chunked: bool = True,
    ) -> Curve:
        gauss = self.spec.gauss if gauss is None else gauss
        if chunked and self.spec.alpha_chunk > 1 and self.can_vmap and not gauss:
            return self._run_chunked(alphas, progress)
        losses = np.empty(len(alphas))
        accs: list[float | None] = []
        g = np.empty(len(alphas)) if gauss else None
        timing = {"bn": 0.0, "evaluate": 0.0, "gauss": 0.0, "check": 0.0}
        paths: dict[str, list[str]] = {"loss": [], "gauss": []} if gauss else {"loss": []}
        fused = g is not None and self.fast_gauss and self.spec.amp == "off"
        retry = self.resources.retry
        for i, alpha in enumerate(alphas):
            t0 = time.perf_counter()
            with self.autocast():
                self.set_alpha(float(alpha))
            t1 = time.perf_counter()
            if i < CHECKED_ALPHAS:
                fused = self.check_fast_paths(float(alpha), fused, g is not None)
            t_check = time.perf_counter()
            self.per_alpha.new_alpha()
            if fused and g is not None:  # fused implies the Gauss integrand is measured
                # one second-order pass gives the loss, accuracy and Gauss integrand
                keep = PROBE_EXAMPLES if self._second_truth is not None else 0
                losses[i], acc, g[i] = retry(functools.partial(self.fused.evaluate, keep))
                fused = self._fused_agrees(float(alpha))  # else this alpha again, below
            if fused and g is not None:
                paths["loss"].append("second-order")
                paths["gauss"].append("second-order")
                t2 = t_check
            else:
                paths["loss"].append(self.loss_path())
                with self.autocast():
                    losses[i], acc = retry(self.per_alpha.loss_and_accuracy)
                t2 = time.perf_counter()
                if g is not None:
                    g[i] = retry(self.per_alpha.gauss_integrand)
                    paths["gauss"].append("+".join(sorted(self.per_alpha.methods)) or "none")
            accs.append(acc)
            t3 = time.perf_counter()
            timing["bn"] += t1 - t0
            timing["check"] += t_check - t1
            timing["evaluate"] += t2 - t_check
            timing["gauss"] += t3 - t2
            if progress is not None:
                progress(i, float(alpha), float(losses[i]))
        accuracy = None if any(a is None for a in accs) else np.asarray(accs, dtype=np.float64)
        return Curve(
            np.asarray(alphas, dtype=np.float64),
            losses,
            accuracy,
            g,
            timing,
            paths,
            _unique(self.notes + self._method_notes(paths)),
        )

    @staticmethod
    def _method_notes(paths: dict[str, list[str]]) -> list[Note]:
        used = {m for entry in paths.get("gauss", []) for m in entry.split("+")}
        notes = []
        if "reverse" in used:
            notes.append(
                Note(
                    "derivative",
                    "an op of the model has no forward-AD rule: its Gauss length was computed "
                    "by reverse-mode double differentiation (exact, slower)",
                )
            )
        if "finite-differences" in used:
            notes.append(
                Note(
                    "derivative",
                    "an op of the model has no exact derivative rule: its Gauss length was "
                    "computed by central finite differences in float64 (approximate)",
                )
            )
        return notes

    def _run_chunked(
        self, alphas: Sequence[float] | np.ndarray, progress: ProgressFn | None
    ) -> Curve:
        losses: list[float] = []
        accs: list[float] | None = []
        t0 = time.perf_counter()
        k = self.spec.alpha_chunk
        for start in range(0, len(alphas), k):
            chunk = [float(a) for a in alphas[start : start + k]]
            with self.autocast():
                chunk_loss, chunk_acc = self.vmapped.evaluate(chunk, keep_first=start == 0)
            if start == 0 and not self._vmapped_agrees(chunk):
                return self.run(alphas, gauss=False, progress=progress, chunked=False)
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
            np.asarray(alphas, dtype=np.float64),
            np.asarray(losses),
            acc_arr,
            None,
            timing,
            {"loss": ["vmapped"] * len(alphas)},
            list(self.notes),
        )


def _rows(out: object, n: int) -> object:
    """The first ``n`` examples of a module's output (a tensor, or a dict, ModelOutput,
    tuple or list of them)."""
    if isinstance(out, torch.Tensor):
        return out[:n]
    if isinstance(out, dict):
        return {k: _rows(v, n) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return (
            type(out)(_rows(v, n) for v in out)
            if isinstance(out, list)
            else tuple(_rows(v, n) for v in out)
        )
    return out


def _batch_rows(out: object) -> int:
    """The number of examples in a module's output (its first tensor's leading size)."""
    if isinstance(out, torch.Tensor):
        return int(out.shape[0])
    values: Iterable[object] = (
        out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    )
    for v in values:
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    return 0


def _unique(notes: list[Note]) -> list[Note]:
    return list(dict.fromkeys(notes))


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
        # StreamedInputs stands in for the tensor: sliced, it gives prepared batches
        return PreparedData(lazy, targets.to(device))  # type: ignore[arg-type]
    x = adapter.prepare_inputs(inputs).to(device=device)
    if x.is_floating_point():  # token ids stay integers
        x = x.to(dtype)
    x = x.contiguous()
    return PreparedData(x, adapter.prepare_targets(x, targets.to(device)))
