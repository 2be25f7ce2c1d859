"""Ordinary user modules along the straight path, against a reference written here.

Every case trains a small digits classifier from ``tests/usermodels.py`` for a few Adam
steps, runs ``mliscan.compare`` (and, for some, ``mliscan compare --model`` and the
Lightning callback) on its init/final weights, and checks the numbers against
:func:`reference_path`: the definition, implemented in float64 by calling the module itself
(``module(x)``: its own forward, hooks and parametrizations), never mliscan's engine.

The definition (README, paper Sections 3-4):

* theta(a) = theta0 + a (thetaT - theta0) for every floating entry of the state dict, except
  the running statistics of batch norm (tracked), re-estimated at every a from one forward
  over the whole data in one batch, BN modules in train mode and the rest in eval mode: the
  per-channel mean and population variance of everything each BN module received (pooled
  over its calls). Integer and bool buffers come from the nearer endpoint (a >= 0.5: thetaT).
* the loss at a: the mean per-example loss (cross-entropy by default) of the eval-mode
  output's logits (a tensor output; ``["logits"]`` / ``.logits``; a tuple's first element).
* the Gauss length: the trapezoid rule over the alpha grid of the mean over examples of
  ||z'' - (z'' . v) v|| / ||z'|| (v = z' / ||z'||), z the logits; here z' and z'' are
  central finite differences in float64 with the BN statistics (and integer buffers) held at
  their value at a.
"""

from __future__ import annotations

import json
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mliscan
from tests import usermodels as um
from tests.conftest import run_cli

ALPHAS = 7  # linspace(0, 1, 7) holds 0.5 exactly (the integer buffers' switch)
EXAMPLES = 256
RTOL, ATOL = 1e-4, 1e-6  # mliscan computes in float32, the reference in float64
GAUSS_RTOL = 1e-3
FD_STEP = 1e-4  # float64: truncation and rounding both below 1e-6 relative here

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def smoothed_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A user's per-example loss (cross-entropy with label smoothing)."""
    return F.cross_entropy(out, y, reduction="none", label_smoothing=0.1)


@dataclass(frozen=True)
class Case:
    name: str
    factory: Callable[[], nn.Module]
    smooth: bool = True
    """The Gauss length is compared (finite differences need a smooth function)."""
    loss: LossFn | None = None
    before_training: Callable[[nn.Module], None] | None = None
    after_training: Callable[[nn.Module], None] | None = None
    global_hook: Callable[..., object] | None = None
    needs: str | None = None
    """A package the case imports (skipped without it)."""
    lr: float = 0.03
    steps: int = 25


CASES = [
    # 1. nn.Sequential subclasses with their own forward
    Case("temperature_sequential", um.make_temperature_sequential),
    Case("residual_sequential", um.make_residual_sequential),
    Case("conv_flatten_sequential", um.make_conv_flatten_sequential),
    # 2. hooks
    Case("root_hooks", um.make_root_hooks),
    Case("bn_child_hook", um.make_bn_child_hook),
    Case("global_hook", um.make_global_hook, global_hook=um.global_hook),
    # 3. shared modules, tied parameters
    Case("relu_reused", um.make_relu_reused, smooth=False),
    Case("tanh_reused", um.make_tanh_reused),
    Case("linear_reused", um.make_linear_reused),
    Case("tied_parameter", um.make_tied),
    # 4. subclasses of library layers
    Case("subclass_relu", um.make_subclass_relu, smooth=False),
    Case("subclass_tanh_linear", um.make_subclass_tanh_linear),
    Case("subclass_batchnorm", um.make_subclass_bn),
    # 5. reparametrisations
    Case("weight_norm_old", um.make_weight_norm_old),
    Case("spectral_norm_old", um.make_spectral_norm_old),
    Case("pruned", um.make_pruned, after_training=um.prune_more),
    Case("weight_norm_new", um.make_weight_norm_new),
    Case("orthogonal_spectral_new", um.make_orthogonal_spectral),
    # 6. batch norm
    Case("bn_called_twice", um.make_bn_twice),
    Case("bn_no_running_stats", um.make_bn_no_running_stats),
    Case("bn_plain_control", um.make_bn_plain, smooth=False),
    Case("conv_bn2d", um.make_conv_bn2d),
    # 7. other normalisations, attention, hard activations
    Case("layer_norm_module", um.make_layer_norm_module),
    Case("layer_norm_functional", um.make_layer_norm_functional),
    Case("instance_group_norm", um.make_instance_group_norm),
    Case("attention", um.make_attention),
    Case("hard_activations", um.make_hard_activations, smooth=False),
    # 8. outputs
    Case("dict_output", um.make_dict_output),
    Case("model_output", um.make_model_output, needs="transformers"),
    Case("tuple_output", um.make_tuple_output),
    # 9. integer / bool buffers that differ between the endpoints
    Case("int_buffers", um.make_int_buffers, before_training=um.change_int_buffers),
    # controls
    Case("plain_tanh_control", um.make_plain_tanh),
    Case("plain_relu_control", um.make_plain_relu, smooth=False),
    Case("user_loss", um.make_plain_tanh, loss=smoothed_loss),
]
BY_NAME = {c.name: c for c in CASES}


# ---- data and training -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 256 digits as mliscan's --data digits shapes them: [N, 1, 8, 8] in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data[:EXAMPLES] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(bunch.target[:EXAMPLES], dtype=torch.long)
    return x, y


def logits_of(out: object) -> torch.Tensor:
    """The logits of a module's output: a tensor, ``["logits"]``/``.logits``, a tuple's first."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return out["logits"]
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"no logits in a {type(out).__name__}")


def per_example_loss(case: Case, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if case.loss is None:
        return F.cross_entropy(z, y, reduction="none")
    return case.loss(z, y)


def state_of(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@contextmanager
def global_hook(case: Case) -> Iterator[None]:
    """The case's global forward hook, registered for the duration (removed in any case)."""
    if case.global_hook is None:
        yield
        return
    handle = nn.modules.module.register_module_forward_hook(case.global_hook)
    try:
        yield
    finally:
        handle.remove()


def trained(
    case: Case, x: torch.Tensor, y: torch.Tensor, seed: int = 0
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the trained module, theta0, thetaT): a few full-batch Adam steps from a seeded init.

    The module is handed to mliscan as it is after the last step, as a user's script would
    (old-style weight_norm / spectral_norm / prune then hold a ``weight`` with a graph)."""
    torch.manual_seed(seed)
    net = case.factory()
    theta0 = state_of(net)
    if case.before_training is not None:
        case.before_training(net)
    opt = torch.optim.Adam(net.parameters(), lr=case.lr)
    net.train()
    for _ in range(case.steps):
        opt.zero_grad()
        per_example_loss(case, logits_of(net(x)), y).mean().backward()
        opt.step()
    if case.after_training is not None:
        case.after_training(net)
    net.eval()
    return net, theta0, state_of(net)


# ---- the reference ---------------------------------------------------------------------------
@dataclass
class Reference:
    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    integrand: np.ndarray | None

    @property
    def min_delta(self) -> float:
        return float(max(0.0, np.max(self.loss - np.minimum.accumulate(self.loss))))

    @property
    def barrier(self) -> float:
        chord = (1.0 - self.alphas) * self.loss[0] + self.alphas * self.loss[-1]
        return float(np.max(self.loss - chord))

    @property
    def gauss_length(self) -> float:
        assert self.integrand is not None
        g, a = self.integrand, self.alphas
        return float(np.sum((g[1:] + g[:-1]) * np.diff(a)) / 2.0)


def tracked_batch_norms(net: nn.Module) -> tuple[list[nn.Module], set[str]]:
    """The BN modules whose running statistics are re-estimated, and those statistics'
    state-dict names (every name of a module that appears under several)."""
    bns, keys = [], set()
    for name, m in net.named_modules(remove_duplicate=False):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            if all(m is not b for b in bns):
                bns.append(m)
            prefix = f"{name}." if name else ""
            keys |= {prefix + "running_mean", prefix + "running_var"}
    return bns, keys


def theta_at(
    theta0: dict[str, torch.Tensor],
    theta1: dict[str, torch.Tensor],
    alpha: float,
    skip: set[str],
    discrete_alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """theta(alpha) in float64; integer/bool tensors from the endpoint nearer to
    ``discrete_alpha`` (alpha unless given); the names in ``skip`` left out."""
    d = alpha if discrete_alpha is None else discrete_alpha
    out = {}
    for k, t0 in theta0.items():
        if k in skip:
            continue
        t1 = theta1[k]
        if t0.is_floating_point():
            out[k] = t0.double() + alpha * (t1.double() - t0.double())
        else:
            out[k] = (t0 if d < 0.5 else t1).clone()
    return out


def write(live: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    """Copy values into the module's own tensors (a tied tensor is written once per name)."""
    with torch.no_grad():
        for k, v in values.items():
            live[k].copy_(v)


def reestimate(net: nn.Module, bns: list[nn.Module], x: torch.Tensor) -> None:
    """One forward over all of x with the BN modules (only) in train mode; each BN's running
    mean / variance := the per-channel mean / population variance of all its inputs."""
    if not bns:
        return
    seen: dict[int, list[torch.Tensor]] = {id(m): [] for m in bns}

    def capture(module: nn.Module, args: tuple) -> None:
        seen[id(module)].append(args[0].detach())

    handles = [m.register_forward_pre_hook(capture) for m in bns]
    net.eval()
    for m in bns:
        m.train()
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
        net.eval()
    with torch.no_grad():
        for m in bns:
            inputs = seen[id(m)]
            assert inputs, "a batch-norm module received nothing in the forward"
            flat = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in inputs], dim=1)
            m.running_mean.copy_(flat.mean(dim=1))
            m.running_var.copy_(flat.var(dim=1, unbiased=False))


def gauss_integrand(zm: torch.Tensor, z0: torch.Tensor, zp: torch.Tensor, h: float) -> float:
    """Mean over examples of ||d/da (z'/||z'||)|| from central differences."""
    v = ((zp - zm) / (2 * h)).flatten(1)
    acc = ((zp - 2 * z0 + zm) / (h * h)).flatten(1)
    speed = v.norm(dim=1)
    safe = torch.where(speed > 0, speed, torch.ones_like(speed))
    v_hat = v / safe[:, None]
    perp = acc - (acc * v_hat).sum(dim=1, keepdim=True) * v_hat
    g = torch.where(speed > 0, perp.norm(dim=1) / safe, torch.zeros_like(speed))
    return float(g.mean())


def reference_path(
    make: Callable[[], nn.Module],
    theta0: dict[str, torch.Tensor],
    theta1: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: np.ndarray,
    case: Case,
    gauss: bool,
) -> Reference:
    """The definition, in float64, by calling the module itself: a fresh instance from the
    user's factory (its own hooks and parametrizations) holding theta(a)."""
    net = make().double().eval()
    x = x.double()
    live = net.state_dict(keep_vars=True)
    bns, stats = tracked_batch_norms(net)
    losses, accs, integrand = [], [], []

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return logits_of(net(x)).double()

    for a in alphas:
        a = float(a)
        write(live, theta_at(theta0, theta1, a, stats))
        reestimate(net, bns, x)
        z = logits()
        losses.append(float(per_example_loss(case, z, y).double().mean()))
        accs.append(float((z.argmax(dim=1) == y).double().mean()))
        if gauss:
            # the statistics at a (and the integer buffers at a) held fixed
            moved = {k for k, t in theta0.items() if not t.is_floating_point()} | stats
            write(live, theta_at(theta0, theta1, a + FD_STEP, moved))
            zp = logits()
            write(live, theta_at(theta0, theta1, a - FD_STEP, moved))
            zm = logits()
            integrand.append(gauss_integrand(zm, z, zp, FD_STEP))
    return Reference(
        np.asarray(alphas, dtype=np.float64),
        np.asarray(losses),
        np.asarray(accs),
        np.asarray(integrand) if gauss else None,
    )


# ---- comparison ------------------------------------------------------------------------------
def curve_problems(
    label: str,
    what: str,
    alphas: np.ndarray,
    got: object,
    expected: np.ndarray,
    rtol: float,
    atol: float,
) -> list[str]:
    """One line per curve that differs: how many alphas, the worst one, both curves."""
    if got is None:
        return [f"{label}: no {what} curve in the result"]
    g = np.asarray([np.nan if v is None else v for v in got], dtype=np.float64)
    if g.shape != expected.shape:
        return [f"{label}: {what} has shape {g.shape}, expected {expected.shape}"]
    bad = ~np.isclose(g, expected, rtol=rtol, atol=atol) | ~np.isfinite(g)
    if not bad.any():
        return []
    excess = np.where(np.isfinite(g), np.abs(g - expected) - rtol * np.abs(expected), np.inf)
    i = int(np.argmax(excess))
    rel = abs(g[i] - expected[i]) / max(abs(expected[i]), 1e-12)
    return [
        f"{label}: {what} wrong at {int(bad.sum())}/{len(bad)} alphas; worst at "
        f"alpha={alphas[i]:.4f}: got {g[i]:.6g}, expected {expected[i]:.6g} "
        f"(diff {g[i] - expected[i]:+.3g}, rel {rel:.2g}); got {np.array2string(g, precision=5)}, "
        f"expected {np.array2string(expected, precision=5)}"
    ]


def scalar_problem(label: str, what: str, got: object, expected: float, tol: float) -> list[str]:
    if got is None or not np.isfinite(float(got)) or abs(float(got) - expected) > tol:
        return [f"{label}: {what}: got {got}, expected {expected:.7g} (tolerance {tol:.2g})"]
    return []


def compare_with_reference(
    label: str, got: Mapping[str, object], ref: Reference, gauss: bool
) -> list[str]:
    """Problems between a result (the keys of ``PathResult.to_dict()``) and the reference."""
    problems = []
    if not np.allclose(np.asarray(got["alphas"], dtype=np.float64), ref.alphas, atol=1e-12):
        return [f"{label}: alphas {got['alphas']} != {ref.alphas.tolist()}"]
    problems += curve_problems(label, "loss", ref.alphas, got["loss"], ref.loss, RTOL, ATOL)
    problems += curve_problems(
        label, "accuracy", ref.alphas, got["accuracy"], ref.accuracy, 0, 2.0 / EXAMPLES + 1e-9
    )
    curve_tol = 2 * (RTOL * float(np.max(np.abs(ref.loss))) + ATOL)
    problems += scalar_problem(label, "min_delta", got["min_delta"], ref.min_delta, curve_tol)
    problems += scalar_problem(label, "barrier", got["barrier"], ref.barrier, curve_tol)
    if abs(ref.min_delta - float(got["tolerance"])) > curve_tol:
        expected_mono = ref.min_delta <= float(got["tolerance"])
        if got["monotonic"] is not expected_mono:
            problems.append(
                f"{label}: monotonic is {got['monotonic']}, expected {expected_mono} "
                f"(reference min-delta {ref.min_delta:.4g})"
            )
    if gauss:
        assert ref.integrand is not None
        problems += curve_problems(
            label, "gauss_integrand", ref.alphas, got["gauss_integrand"], ref.integrand,
            GAUSS_RTOL, 1e-7,
        )  # fmt: skip
        problems += scalar_problem(
            label, "gauss_length", got["gauss_length"], ref.gauss_length,
            GAUSS_RTOL * abs(ref.gauss_length) + 1e-7,
        )  # fmt: skip
    return problems


def crash(exc: BaseException) -> str:
    """The exception in one line, with the innermost mliscan frame that raised it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "mliscan" in f.filename]
    where = f" (in {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"raised {type(exc).__name__}{where}: {first}"


def run_case(case: Case, digits: tuple[torch.Tensor, torch.Tensor]) -> list[str]:
    x, y = digits
    problems: list[str] = []
    with global_hook(case):
        net, theta0, theta1 = trained(case, x, y)
        before = state_of(net)
        alphas = np.linspace(0, 1, ALPHAS)
        ref = reference_path(case.factory, theta0, theta1, x, y, alphas, case, case.smooth)
        assert ref.loss[0] > ref.loss[-1] + 0.3, f"{case.name}: the training did not move"
        for gauss in (True, False):
            label = f"{case.name} (compare, gauss={gauss})"
            try:
                result = mliscan.compare(
                    theta0, theta1, model=net, data=(x, y), loss=case.loss, alphas=ALPHAS,
                    gauss=gauss, device="cpu",
                )  # fmt: skip
            except Exception as exc:  # a crash is reported with the case, not a bare traceback
                problems.append(f"{label}: {crash(exc)}")
                continue
            problems += compare_with_reference(label, result.to_dict(), ref, gauss and case.smooth)
        after = state_of(net)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if changed:
        problems.append(f"{case.name}: compare modified the user's module: {changed}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compare_matches_the_definition(case: Case, digits) -> None:
    if case.needs is not None:
        pytest.importorskip(case.needs)
    problems = run_case(case, digits)
    assert not problems, "\n".join(problems)


# ---- the command line: --model module:factory ------------------------------------------------
CLI_CASES = [
    "residual_sequential",
    "root_hooks",
    "pruned",
    "weight_norm_new",
    "bn_called_twice",
    "dict_output",
    "int_buffers",
]


@pytest.mark.parametrize("name", CLI_CASES)
def test_command_line_model_factory(name, digits, tmp_path, capsys, monkeypatch) -> None:
    """``mliscan compare i.safetensors f.safetensors --model usernets:make_...``, the user's
    file (a copy of tests/usermodels.py) in the working directory."""
    from safetensors.torch import save_file

    case = BY_NAME[name]
    x, y = digits
    _, theta0, theta1 = trained(case, x, y)
    for state, file in ((theta0, "i.safetensors"), (theta1, "f.safetensors")):
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / file))
    shutil.copy(Path(um.__file__), tmp_path / "usernets.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # --model imports from the cwd
    try:
        code, out, err = run_cli(
            [
                "compare", "i.safetensors", "f.safetensors",
                "--model", f"usernets:{case.factory.__name__}",
                "--data", "digits", "--data-limit", str(EXAMPLES), "--alphas", str(ALPHAS),
                "--device", "cpu", "--json", "-", "-q",
            ],
            capsys,
        )  # fmt: skip
    finally:
        sys.modules.pop("usernets", None)
    assert code == 0, f"{name} (CLI): exit {code}: {err.strip()[-2000:]}"
    alphas = np.linspace(0, 1, ALPHAS)
    ref = reference_path(case.factory, theta0, theta1, x, y, alphas, case, case.smooth)
    problems = compare_with_reference(f"{name} (CLI)", json.loads(out), ref, case.smooth)
    assert not problems, "\n".join(problems)


# ---- the Lightning callback ------------------------------------------------------------------
LIGHTNING_CASES = ["bn_called_twice", "dict_output"]


@pytest.mark.parametrize("name", LIGHTNING_CASES)
def test_lightning_callback(name, digits, tmp_path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from mliscan.integrations.lightning import MLICallback

    case = BY_NAME[name]
    x, y = digits

    class Wrapped(pl.LightningModule):
        """The user's network inside a LightningModule with a forward of its own."""

        def __init__(self) -> None:
            super().__init__()
            self.net = case.factory()

        def forward(self, inputs: torch.Tensor) -> object:
            return self.net(torch.tanh(inputs * 2.0))

        def training_step(self, batch, _):
            xb, yb = batch
            return F.cross_entropy(logits_of(self(xb)), yb)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.03)

    torch.manual_seed(0)
    model = Wrapped()
    theta0 = state_of(model)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=False
    )
    cb = MLICallback(max_examples=EXAMPLES, alphas=ALPHAS, gauss=case.smooth, out_dir=tmp_path)
    trainer = pl.Trainer(
        max_epochs=4, default_root_dir=tmp_path, callbacks=[cb], logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu",
    )  # fmt: skip
    label = f"{name} (Lightning)"
    failure = None
    try:
        trainer.fit(model, loader)
    except Exception as exc:  # the callback measures at the end of fit
        failure = crash(exc)
    assert failure is None, f"{label}: {failure}"
    assert cb.result is not None, f"{label}: the callback left no result"
    alphas = np.linspace(0, 1, ALPHAS)
    ref = reference_path(Wrapped, theta0, state_of(model), x, y, alphas, case, case.smooth)
    problems = compare_with_reference(label, cb.result.to_dict(), ref, case.smooth)
    assert not problems, "\n".join(problems)
