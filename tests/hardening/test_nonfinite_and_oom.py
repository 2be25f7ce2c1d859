"""NaN/Inf along the path, and CUDA out-of-memory, handled without lying or crashing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mliscan.adapter import DataInfo
from mliscan.evaluate import PathEvaluator, alpha_grid, prepare_data
from mliscan.registry import get_adapter
from mliscan.spec import EvalSpec
from tests.conftest import plain_mlp_state, run_cli


def test_diverging_path_reported_per_alpha_and_fails_check(tmp_path: Path, capsys) -> None:
    init = plain_mlp_state(0)
    final = {
        k: v * 1e25 for k, v in plain_mlp_state(1).items()
    }  # finite weights, overflowing logits
    save_file(init, str(tmp_path / "i.safetensors"))
    save_file(final, str(tmp_path / "f.safetensors"))
    base = [
        tmp_path / "i.safetensors",
        tmp_path / "f.safetensors",
        "--arch",
        "mlp",
        "--alphas",
        "6",
        "-q",
    ]
    code, out, err = run_cli(["compare", *base, "--no-gauss", "--json", "-"], capsys)
    assert code == 0
    r = json.loads(out)
    assert r["nonfinite_alphas"] and r["nonfinite_alphas"][0] > 0
    assert r["min_delta"] is None and r["monotonic"] is None and r["barrier"] is None
    assert r["loss"][0] is not None and any(v is None for v in r["loss"])
    assert "NaN/Inf" in err
    code, out, err = run_cli(["check", *base, "--max-delta", "100"], capsys)
    assert code == 1
    assert "FAIL" in out and "undefined" in out


def test_cuda_oom_halves_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = get_adapter("mlp")
    opts = adapter.parse_options({"hidden": "8"})
    torch.manual_seed(0)
    module = adapter.build(opts, DataInfo((1, 8, 8), 10))
    t0 = {k: v.clone() for k, v in module.state_dict().items()}
    t1 = {k: v * 2 for k, v in t0.items()}
    x, y = torch.randn(100, 1, 8, 8), torch.randint(0, 10, (100,))
    data = prepare_data(adapter, x, y, torch.device("cpu"), torch.float32)
    ref = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(batch_size=100, gauss=False)).run(
        alpha_grid(4)
    )
    first = module[0]  # the first layer: reached by every evaluation forward
    real_forward = first.forward

    def limited(inp: torch.Tensor) -> torch.Tensor:
        if inp.shape[0] > 25:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(inp)

    monkeypatch.setattr(first, "forward", limited)
    ev = PathEvaluator(adapter, module, t0, t1, data, EvalSpec(batch_size=100, gauss=False))
    with pytest.warns(UserWarning, match="halved"):
        curve = ev.run(alpha_grid(4))
    assert ev.batch_size == 25
    np.testing.assert_allclose(curve.loss, ref.loss, rtol=1e-6)


def test_streamed_inputs_give_the_in_memory_curve_with_batch_norm(tmp_path: Path) -> None:
    """Data too large for memory is evaluated from a file-backed tensor, batch by batch
    (never copied whole); the curve, BN re-estimation included, is the in-memory one."""
    from mliscan.evaluate import StreamedInputs

    adapter = get_adapter("mlp")
    opts = adapter.parse_options({"hidden": "16", "bn": True})
    info = DataInfo((1, 8, 8), 10)
    torch.manual_seed(0)
    t0 = {k: v.clone() for k, v in adapter.build(opts, info).state_dict().items()}
    torch.manual_seed(1)
    t1 = {k: v.clone() for k, v in adapter.build(opts, info).state_dict().items()}
    x = torch.randn(100, 1, 8, 8)
    y = torch.randint(0, 10, (100,))
    path = tmp_path / "inputs.f32"
    path.write_bytes(x.numpy().tobytes())
    mapped = torch.from_file(str(path), shared=False, size=x.numel()).view(x.shape)
    curves = []
    for inputs, streamed in ((x, False), (mapped, True)):
        data = prepare_data(adapter, inputs, y, torch.device("cpu"), torch.float32, streamed)
        assert isinstance(data.inputs, StreamedInputs) == streamed
        spec = EvalSpec(batch_size=32, gauss_method="jvp")
        ev = PathEvaluator(adapter, adapter.build(opts, info), t0, t1, data, spec)
        curves.append(ev.run(alpha_grid(5)))
    np.testing.assert_allclose(curves[1].loss, curves[0].loss, rtol=1e-6)
    np.testing.assert_allclose(curves[1].gauss_integrand, curves[0].gauss_integrand, rtol=1e-5)
