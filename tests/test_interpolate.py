"""theta(alpha) written into the module: endpoints exact, both memory strategies agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mliscan import interpolate
from mliscan.interpolate import Interpolator, TensorRoles


def _pair(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    t0 = {
        k: v.clone().to(dtype) if v.is_floating_point() else v.clone()
        for k, v in m.state_dict().items()
    }
    t1 = {
        k: (v + torch.randn_like(v.float()).to(dtype)) if v.is_floating_point() else v
        for k, v in t0.items()
    }
    return m, t0, t1


@pytest.mark.parametrize("small", [True, False])
def test_endpoints_are_exact_and_the_middle_is_the_formula(small: bool, monkeypatch) -> None:
    if not small:  # the large-model path: no delta held, theta(alpha) formed in place
        monkeypatch.setattr(interpolate, "SMALL_MODEL_BYTES", 0)
    m, t0, t1 = _pair()
    interp = Interpolator(m, t0, t1, TensorRoles.of(m))
    assert (interp._delta is None) == (not small)
    live = m.state_dict()
    interp.apply(0.0)
    assert all(torch.equal(live[k], t0[k]) for k in interp.t0)
    interp.apply(1.0)
    assert all(torch.equal(live[k], t1[k]) for k in interp.t0)
    interp.apply(0.3)
    for k in interp.t0:
        torch.testing.assert_close(live[k], t0[k] + 0.3 * (t1[k] - t0[k]), rtol=0, atol=1e-6)
    # the endpoints themselves are held as given (no copies)
    assert all(interp.t0[k] is t0[k] and interp.t1[k] is t1[k] for k in interp.t0)


def test_low_precision_endpoints_interpolate_in_float32() -> None:
    m, t0, t1 = _pair(torch.bfloat16)
    m = m.to(torch.bfloat16)
    interp = Interpolator(m, t0, t1, TensorRoles.of(m))
    assert interp._delta is None and all(v.dtype == torch.bfloat16 for v in interp.t0.values())
    interp.apply(0.3)
    live = m.state_dict()
    for k in interp.t0:
        want = (t0[k].float() + 0.3 * (t1[k].float() - t0[k].float())).to(torch.bfloat16)
        assert torch.equal(live[k], want)  # rounded once, from a float32 result


def test_tied_weights_are_interpolated_once() -> None:
    emb = nn.Embedding(4, 3)
    head = nn.Linear(3, 4, bias=False)
    head.weight = emb.weight
    m = nn.ModuleDict({"emb": emb, "head": head})
    roles = TensorRoles.of(m)
    assert roles.interpolated == ("emb.weight",) and roles.parameters == ("emb.weight",)
    assert interpolate.tied_aliases(m) == {"head.weight": "emb.weight"}


def test_large_models_hold_the_difference_and_read_the_endpoint_back(monkeypatch) -> None:
    monkeypatch.setattr(interpolate, "SMALL_MODEL_BYTES", 0)
    m, t0, t1 = _pair()
    exact = {k: v.clone() for k, v in t1.items()}
    reads: list[str] = []

    def reader(k: str) -> torch.Tensor:
        reads.append(k)
        return exact[k].clone()

    interp = Interpolator(m, t0, t1, TensorRoles.of(m), theta1_reader=reader)
    assert interp.t1 == {} and interp._delta is not None  # theta_T itself is not kept
    live = m.state_dict()
    interp.apply(1.0)
    assert all(torch.equal(live[k], exact[k]) for k in interp.t0)  # exact, read from "disk"
    assert sorted(reads) == sorted(interp.t0)
    interp.apply(0.25)
    for k in interp.t0:
        torch.testing.assert_close(live[k], t0[k] + 0.25 * (exact[k] - t0[k]), rtol=0, atol=1e-6)


def test_a_low_precision_final_is_freed_as_its_difference_is_formed(monkeypatch) -> None:
    """bfloat16 theta_T, float32 module: the float32 difference cannot reuse theta_T's memory,
    so theta_T must not outlive it (the caller's dict is consumed too): the 1B-parameter bf16
    peak fell from 13.6 GB to the three copies it should be."""
    import weakref

    monkeypatch.setattr(interpolate, "SMALL_MODEL_BYTES", 0)
    m, t0, t1 = _pair(torch.bfloat16)
    exact = {k: v.clone() for k, v in t1.items()}
    roles = TensorRoles.of(m)
    refs = [weakref.ref(t1[k]) for k in roles.interpolated]
    interp = Interpolator(m, t0, t1, roles, theta1_reader=lambda k: exact[k])
    assert not set(roles.interpolated) & set(t1)  # consumed from the caller's dict
    assert all(r() is None for r in refs)  # and freed
    assert all(d.dtype == torch.float32 for d in interp.delta.values())
    interp.apply(0.5)
    live = m.state_dict()
    for k in interp.t0:
        want = t0[k].float() + 0.5 * (exact[k].float() - t0[k].float())
        torch.testing.assert_close(live[k], want, rtol=0, atol=1e-6)
