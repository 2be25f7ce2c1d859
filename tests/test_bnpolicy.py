"""The BN policy: full-batch pass or chunks, and its out-of-memory fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mliscan import batchnorm, resources
from mliscan.bnpolicy import BNPolicy
from mliscan.resources import ResourcePolicy
from mliscan.spec import BNSpec


def _net() -> tuple[nn.Module, list[nn.Module]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).eval()
    return net, [net[1]]


def _stats(layers):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in layers]


def test_full_batch_pass_is_also_the_evaluation():
    net, layers = _net()
    x = torch.randn(200, 8)
    policy = BNPolicy(net, layers, x, BNSpec(), ResourcePolicy(net, x, (64,), given=50))
    assert policy.chunk is None and policy.in_pass
    policy.reestimate()
    out = policy.take_output()
    assert out is not None and policy.take_output() is None
    with torch.no_grad():
        torch.testing.assert_close(out, net(x))  # eval mode with the new statistics


def test_too_large_for_the_budget_is_computed_in_chunks(monkeypatch):
    net, layers = _net()
    x = torch.randn(200, 8)
    monkeypatch.setattr(resources, "activation_budget", lambda device: 100)
    policy = BNPolicy(net, layers, x, BNSpec(), ResourcePolicy(net, x, (64,), given=50))
    assert policy.chunk == 50 and not policy.in_pass
    policy.reestimate()
    chunked = _stats(layers)
    full, full_layers = _net()
    batchnorm.reestimate(full, full_layers, x, BNSpec())
    for (m, v), (m2, v2) in zip(chunked, _stats(full_layers), strict=True):
        torch.testing.assert_close(m, m2)
        torch.testing.assert_close(v, v2)


def test_out_of_memory_in_the_full_batch_pass_falls_back_to_chunks(monkeypatch):
    net, layers = _net()
    x = torch.randn(200, 8)
    reference, ref_layers = _net()
    batchnorm.reestimate(reference, ref_layers, x, BNSpec())
    real = batchnorm.reestimate
    calls = []

    def flaky(module, layers, inputs, spec, chunk=None, **kw):
        calls.append(chunk)
        if chunk is None:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(module, layers, inputs, spec, chunk=chunk, **kw)

    monkeypatch.setattr(batchnorm, "reestimate", flaky)
    policy = BNPolicy(net, layers, x, BNSpec(), ResourcePolicy(net, x, (64,), given=40))
    with pytest.warns(UserWarning, match="computed in chunks of 40"):
        policy.reestimate()
    assert calls == [None, 40] and policy.chunk == 40
    for (m, v), (m2, v2) in zip(_stats(layers), _stats(ref_layers), strict=True):
        torch.testing.assert_close(m, m2)
        torch.testing.assert_close(v, v2)


def test_no_layers_nothing_to_do():
    net = nn.Sequential(nn.Linear(8, 3))
    x = torch.randn(10, 8)
    policy = BNPolicy(net, [], x, BNSpec(), ResourcePolicy(net, x, (64,)))
    policy.reestimate()
    assert not policy.active and policy.take_output() is None


def test_paper_warm_up_residual_and_warning(mlp_bn_pair, capsys):
    from mliscan.bnpolicy import paper_note, paper_residual
    from tests.conftest import run_cli

    assert paper_residual(1797, BNSpec(mode="exact")) == 0.0
    # digits in batches of 256: 8 batches leave 0.9**8 = 43% on the reset statistics
    assert paper_residual(1797, BNSpec(mode="paper")) == pytest.approx(0.9**8)
    note = paper_note(1797, BNSpec(mode="paper"))
    assert note is not None and note.kind == "batch-norm" and note.warning
    assert "43%" in note.text
    assert paper_note(60_000, BNSpec(mode="paper")) is None  # MNIST: 235 batches
    init, final = mlp_bn_pair / "init.safetensors", mlp_bn_pair / "final.safetensors"
    code, _, err = run_cli(
        ["compare", init, final, "--bn-mode", "paper", "--alphas", "3", "--no-gauss", "-q"], capsys
    )
    assert code == 0 and "warning:" in err and "reset statistics" in err


def test_one_example_cannot_give_bn_statistics(mlp_bn_pair, capsys):
    from tests.conftest import run_cli

    init, final = mlp_bn_pair / "init.safetensors", mlp_bn_pair / "final.safetensors"
    code, _, err = run_cli(["compare", init, final, "--data-limit", "1", "-q"], capsys)
    assert code == 2 and "at least 2 examples" in err and "--bn-mode interpolate" in err
    code, out, err = run_cli(
        [
            "compare",
            init,
            final,
            "--data-limit",
            "1",
            "--bn-mode",
            "interpolate",
            "--alphas",
            "3",
            "-q",
            "--json",
            "-",
        ],
        capsys,
    )
    assert code == 0, err  # interpolated statistics need no data (Gauss length included)
    import json

    assert json.loads(out)["gauss_length"] is not None


def test_bn_variance_is_recorded_and_changes_the_curve_slightly(mlp_bn_pair, capsys):
    import json

    from tests.conftest import run_cli

    init, final = mlp_bn_pair / "init.safetensors", mlp_bn_pair / "final.safetensors"
    base = ["compare", init, final, "--alphas", "4", "--no-gauss", "-q", "--json", "-"]
    code, out, _ = run_cli(base, capsys)
    population = json.loads(out)
    code, out, err = run_cli([*base, "--bn-variance", "unbiased"], capsys)
    assert code == 0, err
    unbiased = json.loads(out)
    assert population["bn"]["variance"] == "population"
    assert unbiased["bn"]["variance"] == "unbiased"
    rel = [abs(a - b) / b for a, b in zip(unbiased["loss"], population["loss"], strict=True)]
    assert 0 < max(rel) < 1e-2  # N/(N-1) with N = 400: a small, real difference
