"""The Python API: the same numbers as the command line, any kind of endpoint and data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mliscan
from mliscan.data import load_dataset
from mliscan.spec import DataSpec, SpecError
from tests.conftest import run_cli


def _files(pair: Path) -> tuple[Path, Path]:
    return pair / "init.safetensors", pair / "final.safetensors"


def _remap(src: dict, keys: list[str]) -> dict:
    """The same layers under another Sequential's indices (layer order kept)."""
    src_layers = sorted({int(k.split(".")[0]) for k in src})
    dst_layers = sorted({int(k.split(".")[0]) for k in keys})
    index = dict(zip(src_layers, dst_layers, strict=True))
    return {f"{index[int(k.split('.')[0])]}.{k.split('.', 1)[1]}": v for k, v in src.items()}


def test_import_mliscan_stays_cheap() -> None:
    code = (
        "import sys, mliscan; before = 'torch' in sys.modules; f = mliscan.compare; "
        "print(before, callable(f), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.split() == ["False", "True", "True"]  # torch only once the API is used
    code = "import sys, mliscan; print({'compare', 'grid', 'track'} <= set(dir(mliscan)))"
    code += "; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.split() == ["True", "False"]  # listed, and still not loaded


def test_same_numbers_as_the_cli(mlp_bn_pair: Path, capsys) -> None:
    init, final = _files(mlp_bn_pair)
    code, out, _ = run_cli(["compare", init, final, "--alphas", "7", "--json", "-", "-q"], capsys)
    assert code == 0
    cli = json.loads(out)
    r = mliscan.compare(init, final, alphas=7)
    assert isinstance(r, mliscan.PathResult)
    d = r.to_dict()
    for key in ("min_delta", "barrier", "distance", "normalized_distance", "gauss_length"):
        assert d[key] == pytest.approx(cli[key], rel=1e-12, abs=1e-12), key
    assert d["loss"] == pytest.approx(cli["loss"], rel=1e-12)
    assert r.monotonic == cli["monotonic"]
    frame = r.to_polars()
    assert frame.height == 7 and set(frame.columns) == {
        "alpha",
        "loss",
        "accuracy",
        "gauss_integrand",
    }


def test_modules_state_dicts_and_tensors(mlp_pair: Path) -> None:
    """An nn.Module as the architecture, the endpoints as a state dict and a module, the
    data as tensors: the numbers of the file-based run on the same examples."""
    init, final = _files(mlp_pair)
    from mliscan.checkpoints import load_checkpoint

    theta0 = load_checkpoint(init).tensors
    theta1 = load_checkpoint(final).tensors
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    keys = list(net.state_dict())
    mapped0, mapped1 = _remap(theta0, keys), _remap(theta1, keys)
    net.load_state_dict(mapped1)
    ds = load_dataset(DataSpec("digits", limit=400))
    r = mliscan.compare(
        mapped0, net, model=net, data=(ds.inputs, ds.targets), alphas=5, gauss=False
    )
    ref = mliscan.compare(init, final, alphas=5, gauss=False)
    assert r.loss == pytest.approx(ref.loss, rel=1e-6)
    assert r.distance == pytest.approx(ref.distance, rel=1e-9)
    assert r.accuracy is not None and r.accuracy[-1] == pytest.approx(ref.accuracy[-1])
    # a DataLoader and a Dataset give the same
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(ds.inputs, ds.targets), batch_size=64
    )
    r2 = mliscan.compare(mapped0, mapped1, model=net, data=loader, alphas=5, gauss=False)
    assert r2.loss == pytest.approx(r.loss, rel=1e-9)


def test_custom_per_example_loss(mlp_pair: Path) -> None:
    ds = load_dataset(DataSpec("digits", limit=100))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    a = {k: v.clone() for k, v in net.state_dict().items()}
    b = {k: v * 3 for k, v in a.items()}

    def margin(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.multi_margin_loss(out, y, reduction="none")

    r = mliscan.compare(
        a, b, model=net, data=(ds.inputs, ds.targets), loss=margin, alphas=3, gauss=False
    )
    with torch.no_grad():
        net.load_state_dict(b)
        expected = margin(net(ds.inputs), ds.targets).double().mean().item()
    assert r.loss[-1] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(Exception, match="one loss per example"):
        mliscan.compare(
            a,
            b,
            model=net,
            data=(ds.inputs, ds.targets),
            alphas=3,
            gauss=False,
            loss=lambda o, y: torch.nn.functional.cross_entropy(o, y),
        )


def test_bad_arguments_are_named(mlp_pair: Path) -> None:
    init, final = _files(mlp_pair)
    with pytest.raises(SpecError, match="alphas=: must be at least 2"):
        mliscan.compare(init, final, alphas=1)
    with pytest.raises(SpecError, match="bn_mode=: expected"):
        mliscan.compare(init, final, bn_mode="magic")
    with pytest.raises(Exception, match=r"a state dict or an nn\.Module"):
        mliscan.compare(42, final)


def test_grid_and_track(mlp_pair: Path, tmp_path: Path) -> None:
    init, final = _files(mlp_pair)
    paths, curves = mliscan.grid([init], [final], alphas=4)
    assert paths["family"].to_list() == ["init-optimum"] and paths["own_pair"].to_list() == [True]
    assert curves.height == 4
    ds = load_dataset(DataSpec("digits", limit=200))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    with mliscan.track(net, (ds.inputs, ds.targets), alphas=5, gauss=False) as t:
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(ds.inputs), ds.targets).backward()
            opt.step()
    assert t.result is not None and t.result.distance > 0
    assert t.result.loss[-1] < t.result.loss[0]
    written = t.result.plot(tmp_path / "c.png")
    assert Path(written).stat().st_size > 1000


def test_own_model_from_the_command_line(mlp_pair: Path, tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def make(width=32, depth=2):\n"
        "    layers = [torch.nn.Flatten()]\n"
        "    n = 64\n"
        "    for _ in range(depth):\n"
        "        layers += [torch.nn.Linear(n, width), torch.nn.ReLU()]\n"
        "        n = width\n"
        "    return torch.nn.Sequential(*layers, torch.nn.Linear(n, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    from mliscan.checkpoints import load_checkpoint, save_checkpoint

    init, final = _files(mlp_pair)
    keys = ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    for src, name in ((init, "i.safetensors"), (final, "f.safetensors")):
        save_checkpoint(tmp_path / name, _remap(load_checkpoint(src).tensors, keys), {})
    code, out, err = run_cli(
        [
            "compare",
            "i.safetensors",
            "f.safetensors",
            "--model",
            "mymodels:make",
            "--model-arg",
            "width=32",
            "--data",
            "digits",
            "--data-limit",
            "400",
            "--alphas",
            "5",
            "--no-gauss",
            "--json",
            "-",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    ref = mliscan.compare(init, final, alphas=5, gauss=False)
    assert json.loads(out)["loss"] == pytest.approx(ref.to_dict()["loss"], rel=1e-6)
    code, _, err = run_cli(
        ["compare", "i.safetensors", "f.safetensors", "--model", "nowhere:make", "-q"], capsys
    )
    assert code == 2 and "cannot import nowhere" in err
    code, _, err = run_cli(
        [
            "compare",
            "i.safetensors",
            "f.safetensors",
            "--model",
            "mymodels:make",
            "--model-arg",
            "width=7",
            "-q",
        ],
        capsys,
    )
    assert code == 2 and "Traceback" not in err


def test_api_names_are_not_shadowed_by_modules() -> None:
    import mliscan.cli.app
    import mliscan.families
    import mliscan.results

    assert callable(mliscan.compare) and callable(mliscan.grid) and callable(mliscan.track)
    assert mliscan.PathResult.__name__ == "PathResult"


def test_hostile_arguments_of_the_api_and_of_model(
    tmp_path: Path, mlp_pair: Path, capsys, monkeypatch
) -> None:
    from mliscan.errors import MliscanError

    init, final = _files(mlp_pair)
    for bad in (123, ("a", "b"), (torch.zeros(3, 64), torch.zeros(2, dtype=torch.long))):
        with pytest.raises(MliscanError):
            mliscan.compare(init, final, model=torch.nn.Linear(64, 10), data=bad)
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "fails.py").write_text("def make():\n    raise ValueError('no')\n")
    monkeypatch.chdir(tmp_path)
    for spec, needle in (
        ("boom:make", "importing boom raised RuntimeError"),
        ("fails:make", "the factory raised ValueError"),
    ):
        code, _, err = run_cli(["compare", init, final, "--model", spec, "-q"], capsys)
        assert code == 2 and needle in err, err
    code, _, err = run_cli(["compare", init, final, "--ema", "-q"], capsys)
    assert code == 2 and "drop --ema" in err


def test_output_picks_the_logits_of_any_output() -> None:
    """output= maps a model's own output to its logits; the loss is then cross-entropy of
    those logits (reference: the module's own forward, written here)."""
    import mliscan

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(5, 3)

        def forward(self, x):
            return {"z": self.lin(x), "other": x}

    torch.manual_seed(0)
    net = Named()
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    init = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.lin.weight.add_(1.0)
    r = mliscan.compare(
        init, net, model=net, data=(x, y), alphas=2, gauss=False, output=lambda o: o["z"]
    )
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(net(x)["z"], y).item()
    assert r.loss[-1] == pytest.approx(want, rel=1e-6)
    from mliscan.errors import UsageError

    with pytest.raises(UsageError, match="output= takes a function"):
        mliscan.compare(init, net, model=net, data=(x, y), alphas=2, output=5)


def test_every_command_line_option_is_an_argument_or_listed() -> None:
    """compare's arguments are the command's options by the same names (generated from the
    same spec fields), with the same defaults; CLI_ONLY lists the rest with their Python form."""
    import inspect

    import typer.main

    from mliscan import api
    from mliscan.cli.app import app

    command = typer.main.get_command(app).commands["compare"]
    ignored = ("init", "final", "help", "help_all")
    options = {p.name: p for p in command.params if p.name not in ignored}
    arguments = inspect.signature(mliscan.compare).parameters
    missing = sorted(set(options) - set(arguments) - set(api.CLI_ONLY))
    assert not missing, f"compare() lacks {missing}: add them, or list them in CLI_ONLY"
    assert set(api.CLI_ONLY) <= set(options), "CLI_ONLY names a gone option"
    for name in set(options) & set(arguments) - {"data", "arch", "unrelated"}:
        default = options[name].default
        if name == "bn_batch_size":
            default = None if default == "all" else default
        assert arguments[name].default == default, name


def test_arguments_and_errors_in_python_words(mlp_pair: Path) -> None:
    from mliscan.errors import DataError, MliscanError, UsageError

    init, final = _files(mlp_pair)
    with pytest.warns(DeprecationWarning, match=r"bn_mode="):
        r = mliscan.compare(init, final, alphas=3, gauss=False, bn="interpolate")
    assert r.spec.bn.mode == "interpolate"
    r = mliscan.compare(
        init, final, alphas=3, gauss_method="jvp", bn_variance="unbiased", unrelated=[4, 5]
    )
    assert r.unrelated_seeds == [4, 5] and r.spec.gauss_method == "jvp"
    with pytest.raises(TypeError, match=r"--hidden is arch_options=\{'hidden'"):
        mliscan.compare(init, final, hidden="8")
    with pytest.raises(TypeError, match="did you mean alphas="):
        mliscan.compare(init, final, alpahs=3)
    with pytest.raises(UsageError) as caught:  # a message of the data layer, reworded
        mliscan.compare(init, final, data="cifar10")
    assert "data_dir=DIR" in str(caught.value) and "--" not in str(caught.value)
    with pytest.raises(MliscanError, match="cifar"):  # a Path is taken as the text would be
        mliscan.compare(init, final, data="cifar10", data_dir=Path("/nonexistent"))
    with pytest.raises(SpecError, match=r"bn_warmup_batches=: .* give bn_batch_size= too"):
        mliscan.compare(init, final, bn_warmup_batches=2)
    # a module on flat inputs meets the digits' images: the message names the way out
    net = torch.nn.Linear(64, 10)
    with pytest.raises(DataError, match=r"model= cannot run .* input_shape=\(64,\)"):
        mliscan.compare(net.state_dict(), net, model=net, data="digits", alphas=2)
    r = mliscan.compare(
        net.state_dict(), net, model=net, data="digits", data_limit=50, alphas=2, input_shape=(64,)
    )
    assert r.distance == 0
    with pytest.raises(UsageError, match="input_shape= goes with model="):
        mliscan.compare(init, final, input_shape=(64,))


def test_one_line_repr_notebook_table_and_no_library_noise(mlp_pair: Path) -> None:
    import warnings

    init, final = _files(mlp_pair)

    class Scripting(torch.nn.Module):
        """A module whose call makes torch warn (as timm's scripted layers do)."""

        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)
            self.scripted = False

        def forward(self, x):
            if not self.scripted:
                self.scripted = True
                torch.jit.script(torch.nn.Identity())  # FutureWarning: torch.jit.script
            return self.lin(x.flatten(1))

    net = Scripting()
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = mliscan.compare(net.state_dict(), net, model=net, data="digits", alphas=2)
        inside = list(warnings.filters)
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], seen[0].message
    assert warnings.filters == filters and inside != filters  # scoped to the call
    with pytest.warns(FutureWarning):  # outside mliscan's calls the user's filters rule
        torch.jit.script(torch.nn.Identity())
    r = mliscan.compare(init, final, alphas=3)
    text = repr(r)
    assert "\n" not in text and len(text) < 300 and "min_delta=" in text, text
    assert text.startswith("PathResult(") and "monotonic=True" in text
    html = r._repr_html_()
    assert html.startswith("<table") and "min delta" in html and str(final) in html
