"""Permutation alignment (weight matching): a permuted copy is recovered exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mliscan.adapters.resnet import cifar_resnet_spec

from mliscan.adapter import DataInfo
from mliscan.align import apply, weight_matching
from mliscan.permutation import sequential_spec
from mliscan.registry import get_adapter
from tests.conftest import TrainedRun, run_cli


def _net(name: str, options: dict, info: DataInfo, seed: int):
    adapter = get_adapter(name)
    torch.manual_seed(seed)
    return adapter.build(adapter.parse_options(options), info)


@pytest.mark.parametrize(
    ("name", "options", "info"),
    [
        ("mlp", {"hidden": "16,12", "bn": True}, DataInfo((1, 8, 8), 10)),
        ("simplecnn", {"bn": True}, DataInfo((1, 8, 8), 10)),
        ("resnet20", {}, DataInfo((3, 8, 8), 10)),
        ("resnet20", {"bn": False, "init": "fixup"}, DataInfo((3, 8, 8), 10)),
    ],
)
def test_a_permuted_copy_computes_the_same_and_is_recovered(name, options, info) -> None:
    net = _net(name, options, info, 0).eval()
    spec = get_adapter(name).permutation(net)
    rng = np.random.default_rng(1)
    shuffle = {g: rng.permutation(n) for g, n in spec.sizes.items()}
    # weights without ties (Fixup zeroes whole layers, which any permutation matches)
    a = {
        k: torch.randn_like(v) / (v[0].numel() ** 0.5 if v.dim() > 1 else 3)
        if v.is_floating_point()
        else v.clone()
        for k, v in net.state_dict().items()
    }
    # BN statistics that are not the defaults, so that they must follow their channels
    for k in a:
        if k.endswith("running_var"):
            a[k] = torch.rand_like(a[k]) + 0.5
        if k.endswith("running_mean"):
            a[k] = torch.randn_like(a[k])
    b = apply(spec, a, shuffle)
    x = get_adapter(name).prepare_inputs(torch.randn(32, *info.input_shape))
    twin = _net(name, options, info, 0).eval()
    net.load_state_dict(a)
    twin.load_state_dict(b)
    with torch.no_grad():
        torch.testing.assert_close(net(x), twin(x), rtol=1e-5, atol=1e-5)  # same function
    assert any(not torch.equal(a[k], b[k]) for k in a)
    perms, iterations = weight_matching(spec, a, b)
    aligned = apply(spec, b, perms)
    for k in a:
        torch.testing.assert_close(aligned[k], a[k])
    assert iterations >= 1


def test_alignment_never_increases_the_distance() -> None:
    info = DataInfo((1, 8, 8), 10)
    for seed in range(3):
        a = _net("mlp", {"hidden": "32,32"}, info, seed).state_dict()
        b = _net("mlp", {"hidden": "32,32"}, info, seed + 10).state_dict()
        net = _net("mlp", {"hidden": "32,32"}, info, 0)
        spec = sequential_spec(net)
        perms, _ = weight_matching(spec, a, b)
        aligned = apply(spec, b, perms)

        def dist(x, y):
            return sum(float(((x[k] - y[k]) ** 2).sum()) for k in x) ** 0.5

        assert dist(a, aligned) <= dist(a, b) + 1e-9


def test_compare_align_flat_path_and_record(tmp_path: Path, capsys) -> None:
    from mliscan.checkpoints import save_checkpoint

    info = DataInfo((1, 8, 8), 10)
    net = _net("mlp", {"hidden": "16"}, info, 0)
    spec = sequential_spec(net)
    a = {k: v.clone() for k, v in net.state_dict().items()}
    b = apply(spec, a, {g: np.random.default_rng(2).permutation(n) for g, n in spec.sizes.items()})
    meta = {"arch": "mlp", "arch_options": {"hidden": [16]}}
    save_checkpoint(tmp_path / "a.safetensors", a, meta)
    save_checkpoint(tmp_path / "b.safetensors", b, meta)
    base = [
        "compare",
        tmp_path / "a.safetensors",
        tmp_path / "b.safetensors",
        "--alphas",
        "5",
        "--no-gauss",
        "--data-limit",
        "100",
        "-q",
        "--json",
        "-",
    ]
    code, out, err = run_cli(base, capsys)
    plain = json.loads(out)
    assert code == 0 and plain["alignment"] is None and plain["distance"] > 1
    code, out, err = run_cli([*base, "--align", "weight-matching"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["distance"] == pytest.approx(0, abs=1e-6)  # the same network, found again
    assert max(r["loss"]) - min(r["loss"]) < 1e-6  # a flat path
    assert r["alignment"]["method"] == "weight-matching" and r["alignment"]["units_moved"] > 0
    assert r["alignment"]["unaligned_distance"] == pytest.approx(plain["distance"])
    assert r["alignment"]["unaligned_barrier"] == pytest.approx(plain["barrier"], abs=1e-9)


def test_an_architecture_without_a_permutation_structure() -> None:
    from mliscan.align import align

    with pytest.raises(Exception, match="declares no permutation structure") as info:
        align(get_adapter("hf-causal-lm"), torch.nn.Linear(2, 2), {}, {})
    # the aligned architectures are read off the registry, not listed by hand
    assert "mlp" in str(info.value) and "resnet20" in str(info.value)


def test_the_resnet_stream_keeps_the_zero_padded_channels_apart() -> None:
    """After an option-A shortcut the wider stream is the previous one at an offset plus
    the zero-padded channels; a permutation mixing the two would change the function."""
    net = _net("resnet20", {}, DataInfo((3, 8, 8), 10), 0)
    spec = cifar_resnet_spec(net)
    # stage 2's first block widens 16 -> 32: channels 8..23 carry the stage-1 stream
    out_axis = spec.axes["layers.3.conv2.weight"][0]
    assert [g for g, _ in out_axis] == ["S", "Z3"]
    np.testing.assert_array_equal(out_axis[0][1], np.arange(8, 24))
    np.testing.assert_array_equal(out_axis[1][1], np.r_[np.arange(8), np.arange(24, 32)])
    # stage 3 (64 channels): the stage-1 stream at 24..39, stage 2's zeros around it
    fc_in = dict(spec.axes["fc.weight"][1])
    np.testing.assert_array_equal(fc_in["S"], np.arange(24, 40))
    np.testing.assert_array_equal(fc_in["Z3"], np.r_[np.arange(16, 24), np.arange(40, 48)])
    assert spec.sizes == {
        "S": 16,
        "Z3": 16,
        "Z6": 32,
        **{f"B{i}": c for i, c in enumerate([16] * 3 + [32] * 3 + [64] * 3)},
    }


def test_grid_with_alignment_keeps_both_paths(
    trained_run: TrainedRun, tmp_path: Path, capsys
) -> None:
    import polars as pl

    from mliscan.spec import DataSpec

    for seed in (0, 1):
        trained_run(
            "align",
            copy_to=tmp_path / f"s{seed}",
            arch_options={"hidden": "16"},
            data=DataSpec("digits", limit=200),
            epochs=3,
            batch_size=50,
            lr=0.1,
            seed=seed,
        )
    out = tmp_path / "g"
    code, _, err = run_cli(
        ["grid", tmp_path, "--out", out, "--alphas", "5", "-q", "--align", "weight-matching"],
        capsys,
    )
    assert code == 0, err
    paths = pl.read_parquet(out / "paths.parquet")
    oo = paths.filter(pl.col("family") == "optimum-optimum").row(0, named=True)
    assert oo["unaligned_distance"] is not None
    assert oo["distance"] <= oo["unaligned_distance"] + 1e-9


def test_plane_with_alignment(tmp_path: Path, capsys) -> None:
    from mliscan.checkpoints import save_checkpoint

    info = DataInfo((1, 8, 8), 10)
    meta = {"arch": "mlp", "arch_options": {"hidden": [8]}}
    net = _net("mlp", {"hidden": "8"}, info, 0)
    spec = sequential_spec(net)
    for seed, name in ((0, "a"), (1, "b"), (2, "c")):
        state = _net("mlp", {"hidden": "8"}, info, seed).state_dict()
        save_checkpoint(tmp_path / f"{name}.safetensors", state, meta)
    assert spec.sizes
    code, _, err = run_cli(
        [
            "plane",
            *(tmp_path / f"{n}.safetensors" for n in "abc"),
            "--resolution",
            "3",
            "--data-limit",
            "50",
            "--align",
            "weight-matching",
            "--out",
            tmp_path / "p",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads((tmp_path / "p" / "plane.json").read_text())
    assert set(record["alignment"]) == {"B", "C"}


def test_the_objective_is_the_parameters_not_the_running_statistics() -> None:
    """BN statistics are re-estimated on the path: weight matching leaves them out of its
    objective (they follow their channels all the same), and records the objective before
    and after and the permutation of each group. Reference: the objective written here."""
    from mliscan.align import align

    info = DataInfo((1, 8, 8), 10)
    net = _net("mlp", {"hidden": "16,12", "bn": True}, info, 0).eval()
    spec = sequential_spec(net)
    rng = np.random.default_rng(2)
    a = {
        k: torch.randn_like(v) if v.is_floating_point() else v.clone()
        for k, v in net.state_dict().items()
    }
    b = {
        k: torch.randn_like(v) if v.is_floating_point() else v.clone()
        for k, v in net.state_dict().items()
    }
    for k in b:  # huge statistics: with them in the objective they would decide the match
        if k.endswith(("running_mean", "running_var")):
            b[k] = torch.as_tensor(rng.uniform(1e3, 1e4, size=b[k].shape), dtype=b[k].dtype)
    params = [n for n, _ in net.named_parameters()]
    aligned, record = align(get_adapter("mlp"), net, a, b)
    only_params, _ = weight_matching(spec, a, b, objective=params)
    with_stats, _ = weight_matching(spec, a, b)  # every permuted tensor: another match
    assert any(not np.array_equal(only_params[g], with_stats[g]) for g in spec.sizes)
    expected = apply(spec, b, only_params)
    for k in a:
        torch.testing.assert_close(aligned[k], expected[k])

    def objective(state):
        return sum(float((a[k].double() * state[k].double()).sum()) for k in params)

    assert record["objective_before"] == pytest.approx(objective(b), rel=1e-9)
    assert record["objective_after"] == pytest.approx(objective(aligned), rel=1e-9)
    assert record["objective_after"] >= record["objective_before"]
    assert set(record["permutations"]) == set(spec.sizes)
    for group, perm in record["permutations"].items():
        assert sorted(perm) == list(range(spec.sizes[group]))
