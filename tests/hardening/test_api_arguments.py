"""The Python API validates like the command line (issue 23, API item).

Hostile or careless arguments of ``mliscan.compare`` / ``grid`` / ``track`` are a
``UsageError`` or ``DataError`` (both ``MliscanError``) naming the argument, before any work:
never a raw torch error, never a silently wrong number.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mliscan
from mliscan.errors import MliscanError, UsageError


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 4))


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _compare(**kw):
    net = _net()
    init = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[1].weight.add_(0.1)
    kw.setdefault("data", _data())
    return mliscan.compare(init, net, model=net, alphas=3, gauss=False, device="cpu", **kw)


def test_a_healthy_call_still_works() -> None:
    r = _compare()
    assert len(r.to_dict()["loss"]) == 3


@pytest.mark.parametrize(
    ("kw", "said"),
    [
        ({"data": (_data()[0], _data()[1].float())}, "default loss (cross-entropy)"),
        ({"data": (_data()[0], _data()[1].bool())}, "default loss (cross-entropy)"),
        ({"data": (_data()[0], torch.zeros(12, 4, dtype=torch.long))}, "1-D integer"),
        ({"data": (_data()[0], _data()[1] - 5)}, "must be >= 0"),
        ({"data": (_data()[0], _data()[1] + 10)}, "the model has 4 outputs"),
        ({"data": (_data()[0], _data()[1][:5])}, "one row per example"),
        ({"data": (torch.tensor(1.0), torch.tensor(1))}, "one row per example"),
        ({"data": (_data()[0],)}, "two tensors"),
        ({"data": [1, 2, 3]}, "data= takes"),
        ({"data": "no-such-data"}, "not a dataset name"),
        ({"data_limit": -5}, "data_limit="),
        ({"data_limit": 0}, "data_limit="),
        ({"data_limit": 2.5}, "data_limit="),
        ({"data_limit": True}, "data_limit="),
        ({"loss": lambda out, y: out.sum(dim=1)[:3]}, "returned 3 values"),
        ({"loss": "cross-entropy"}, "loss= takes a function"),
    ],
)
def test_bad_arguments_are_one_usage_error(kw: dict, said: str) -> None:
    with pytest.raises(MliscanError, match=re.escape(said)) as info:
        _compare(**kw)
    assert "\n" not in str(info.value)


def test_a_model_that_is_not_a_module_or_has_no_values() -> None:
    x, y = _data()
    with pytest.raises(UsageError, match=r"nn\.Module, got str"):
        mliscan.compare(_net().state_dict(), _net().state_dict(), model="resnet", data=(x, y))
    with torch.device("meta"):
        meta = torch.nn.Linear(8, 4)
    with pytest.raises(UsageError, match="meta device"):
        mliscan.compare(_net().state_dict(), _net().state_dict(), model=meta, data=(x, y))


class _Shapes(torch.utils.data.Dataset):
    """Examples whose shape changes half-way."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.zeros(8 if i < 4 else 9), 0


class _Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in itertools.count():
            yield torch.zeros(8), i % 4


def test_a_loader_whose_batches_change_shape_is_named() -> None:
    loader = torch.utils.data.DataLoader(_Shapes(), batch_size=4)
    with pytest.raises(UsageError, match="batch 1 holds inputs"):
        _compare(data=loader)


def test_an_endless_loader_needs_data_limit(monkeypatch) -> None:
    from mliscan import api

    monkeypatch.setattr(api, "MAX_LOADER_EXAMPLES", 1000)  # the documented cap, made small
    loader = torch.utils.data.DataLoader(_Endless(), batch_size=100)
    with pytest.raises(UsageError, match="pass data_limit=N"):
        _compare(data=loader)
    assert len(_compare(data=loader, data_limit=50).to_dict()["loss"]) == 3


def test_track_checks_data_before_the_body_runs() -> None:
    net = _net()
    ran = []
    x, _ = _data()
    with pytest.raises(UsageError, match="default loss"), mliscan.track(net, (x, x), alphas=3):
        ran.append(True)
    assert not ran
    with pytest.raises(UsageError, match="not a dataset name"), mliscan.track(net, "no-data"):
        ran.append(True)
    assert not ran


def test_grid_refuses_a_string_for_a_list() -> None:
    with pytest.raises(UsageError, match="takes a list of endpoints"):
        mliscan.grid("runs", ["a.safetensors"])
    with pytest.raises(UsageError, match="takes a list of endpoints"):
        mliscan.grid(["a.safetensors"], "runs")


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    dtype=st.sampled_from([torch.float32, torch.int64, torch.bool, torch.int8, torch.uint8]),
    shape=st.sampled_from([(12,), (12, 1), (12, 4), (5,), ()]),
    low=st.integers(-3, 6),
    limit=st.one_of(st.none(), st.integers(-2, 20)),
)
def test_fuzzed_targets_and_limits_never_raise_raw_errors(dtype, shape, low, limit) -> None:
    x, _ = _data()
    y = (torch.arange(max(1, int(torch.tensor(shape).prod()))) % 4 + low).reshape(shape)
    y = y.to(dtype)
    try:
        _compare(data=(x, y), data_limit=limit)
    except MliscanError as exc:
        assert "\n" not in str(exc)
