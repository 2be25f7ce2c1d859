"""A command-line fuzzer: every command's options and config files, hostile values.

Whatever the arguments, mliscan ends with exit 0, 1, 2 or 130, says what went wrong in one
line on stderr, and never shows a traceback (exit 3 is for genuine bugs only).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import typer.main
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mliscan.cli.app import app, main

ALLOWED = {0, 1, 2, 130}
# Examples per command (MLISCAN_FUZZ_EXAMPLES=500 for a longer hunt; the suite keeps it short).
EXAMPLES = int(os.environ.get("MLISCAN_FUZZ_EXAMPLES", "25"))
COMMANDS = [
    "compare",
    "check",
    "grid",
    "plane",
    "logits",
    "report",
    "train",
    "runs",
    "adapters",
    "trajectory",
]
HOSTILE = [
    "",
    "0",
    "1",
    "-1",
    "2",
    "nan",
    "inf",
    "-inf",
    "1e12",
    "1e-300",
    "abc",
    "all",
    "true",
    "false",
    "x.xyz",
    "a=b",
    "=",
    "../../etc/passwd",
    "/dev/null",
    "/",
    "é" * 40,
    "x" * 300,
    "3,1,4",
    "0-30000000",
    "hf:org/none@step0",
    "timm:nope",
    "init:nowhere",
    "cuda",
    "quantum",
    "-",
    # valid values too, so that the fuzzer reaches past option parsing
    "3",
    "0.5",
    "256",
    "exact",
    "paper",
    "interpolate",
    "float64",
    "bfloat16",
    "bf16",
    "jvp",
    "auto",
    "cpu",
    "digits",
    "tinytext",
    "mnist",
    "text",
    "imagefolder",
    "mlp",
    "resnet20",
    "hidden=8",
    # names that are not what they look like: rich markup and glob patterns (issue #23)
    "[/x]",
    "[red]r",
    "s[1]",
    "*",
]


def _options(command: str) -> list[tuple[str, bool]]:
    """(option, takes a value) for every option of ``command``, from its click parameters."""
    group = typer.main.get_command(app)
    out = []
    for param in group.commands[command].params:
        if param.param_type_name != "option" or "--help" in param.opts:
            continue
        flag = next(o for o in param.opts if o.startswith("--"))
        out.append((flag, not param.is_flag))
        out += [(o, False) for o in param.secondary_opts]
    return out


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # pragma: no cover - main returns its code
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def _assert_clean(argv: list[str], code: int, err: str) -> None:
    assert code in ALLOWED, f"exit {code} for {argv}: {err[-600:]}"
    assert "Traceback" not in err, f"traceback for {argv}: {err[-600:]}"
    if code == 2:
        lines = [line for line in err.strip().splitlines() if line.startswith("mliscan:")]
        errors = [
            line for line in err.strip().splitlines() if "Error" in line or "mliscan:" in line
        ]
        assert lines or "Usage:" in err, f"no message for {argv}: {err[-600:]}"
        assert len(errors) <= 2, f"several error lines for {argv}: {err[-600:]}"


@st.composite
def command_lines(draw: st.DrawFn, command: str, tiny: Path) -> list[str]:
    opts = _options(command)
    argv = [command]
    n_pos = {
        "compare": 2,
        "check": 2,
        "logits": 2,
        "plane": 3,
        "report": 1,
        "runs": 1,
        "trajectory": 1,
    }.get(command, 0)
    real = [str(tiny / "init.safetensors"), str(tiny / "final.safetensors")]
    if n_pos >= 2 and draw(st.booleans()):  # half the time a real pair: reach the engine
        argv += [*real, real[0]][:n_pos]
    elif command == "trajectory" and draw(st.booleans()):  # a real run folder
        argv.append(str(tiny))
    else:
        for _ in range(n_pos):
            argv.append(draw(st.sampled_from([*HOSTILE, *real, str(tiny), str(tiny.parent)])))
    chosen = draw(st.lists(st.sampled_from(opts), max_size=4)) if opts else []
    for flag, takes in chosen:
        argv.append(flag)
        if takes:
            argv.append(draw(st.sampled_from(HOSTILE)))
    if command in ("compare", "check", "logits", "plane", "grid", "trajectory"):
        argv += (
            ["--data-limit", "20", "--alphas", "3"]
            if command != "plane"
            else [
                "--data-limit",
                "20",
                "--resolution",
                "2",
            ]
        )
    if command == "train":
        argv += ["--epochs", "1", "--data-limit", "20", "--batch-size", "10"]
    return argv


@pytest.mark.parametrize("command", COMMANDS)
def test_fuzzed_options_never_crash(command: str, tiny: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLISCAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLISCAN_LOCK_TIMEOUT", "1")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=True,
    )
    @given(argv=command_lines(command, tiny))
    def run(argv: list[str]) -> None:
        code, err = _run(argv)
        _assert_clean(argv, code, err)

    run()


TOML_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["abc", "", "all", "true", "false", "nan", "1e3", "-1", "digits", "cuda"]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
)
TOML_KEYS = st.sampled_from(
    [
        "max-delta",
        "require-monotonic",
        "max-gauss-length",
        "max-barrier",
        "min-final-accuracy",
        "tol",
        "alphas",
        "data-limit",
        "data",
        "bn-batch-size",
        "bn-mode",
        "dtype",
        "device",
        "batch-size",
        "gauss",
        "hidden",
        "arch-opt",
        "no_such_key",
        "max_delta",
    ]
)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    table=st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=4),
    command=st.sampled_from(["check", "compare", "grid"]),
)
def test_fuzzed_config_files_never_crash(tmp_path_factory, table: dict, command: str) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in table.items())
    (folder / "pyproject.toml").write_text(f"[tool.mliscan.{command}]\n{body}\n")
    old = os.getcwd()
    os.chdir(folder)
    try:
        argv = [command, "missing-init.safetensors", "missing-final.safetensors"]
        if command == "grid":
            argv = [command, "--init", "missing-init.safetensors", "--optimum", "missing.pt"]
        code, err = _run(argv)
    finally:
        os.chdir(old)
    _assert_clean(argv, code, err)
    assert code == 2  # the endpoints do not exist; the config is checked on the way


CODE_VALUES = {
    "model": st.sampled_from(["planted_fuzz:make", "os:getcwd", "abc", ""]),
    "model-arg": st.lists(st.sampled_from(["width=8", "x", "=1"]), max_size=2),
    "trust-pickle": st.booleans(),
}


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    table=st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=3),
    code=st.dictionaries(st.sampled_from(sorted(CODE_VALUES)), st.just(None), max_size=2),
    data=st.data(),
    fname=st.sampled_from(["mliscan.toml", "pyproject.toml"]),
)
def test_fuzzed_settings_above_a_repository_never_run_code(
    tmp_path_factory, table: dict, code: dict, data, fname: str
) -> None:
    """A settings file above the repository root may set anything; a key that would run
    code is refused (exit 2, naming it) and the planted factory never runs."""
    outer = tmp_path_factory.mktemp("above")
    repo = outer / "repo"
    (repo / ".git").mkdir(parents=True)
    marker = outer / "marker"
    (repo / "planted_fuzz.py").write_text(
        f"import pathlib\ndef make(**kw):\n    pathlib.Path({str(marker)!r}).write_text('ran')\n"
    )
    for key in code:
        table[key] = data.draw(CODE_VALUES[key])
    body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in table.items())
    header = "[tool.mliscan.check]" if fname == "pyproject.toml" else "[check]"
    (outer / fname).write_text(f"{header}\n{body}\n")
    old = os.getcwd()
    os.chdir(repo)
    try:
        argv = ["check", "missing-init.safetensors", "missing-final.safetensors"]
        exit_code, err = _run(argv)
    finally:
        os.chdir(old)
    _assert_clean(argv, exit_code, err)
    assert not marker.exists()
    if code:
        assert exit_code == 2 and "above the project" in err, err


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)


def _nested(depth: int, leaf: object) -> str:
    """JSON text nested ``depth`` lists deep (written directly: json.dumps would recurse)."""
    return "[" * depth + json.dumps(leaf) + "]" * depth


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.one_of(
        st.builds(json.dumps, JSON),
        st.builds(_nested, st.integers(60, 3000), JSON),
        st.builds(lambda d: json.dumps({"weight_map": d}), JSON),
        st.builds(lambda d: json.dumps({"config": d, "status": "complete"}), JSON),
    ),
    target=st.sampled_from(["run.json", "index", "trainer_state"]),
)
@example(text=_nested(3000, 1), target="run.json")
@example(text=_nested(3000, 1), target="index")
@example(text=_nested(3000, 1), target="trainer_state")
@example(text='{"weight_map": {"a": ["x"], "b": 5}}', target="index")
@example(text='{"global_step": 123456789012345678901234567890}', target="trainer_state")
def test_fuzzed_json_files_never_crash(
    tiny: Path, tmp_path_factory, text: str, target: str
) -> None:
    """Hostile JSON (any shape, nested thousands deep, integers past 64 bits) where mliscan
    reads a run record, a shard index or a Trainer state: exit 0, 1 or 2, one line."""
    import shutil

    folder = tmp_path_factory.mktemp("json")
    if target == "run.json":
        run = folder / "runs" / "r"
        shutil.copytree(tiny, run)
        (run / "run.json").write_text(text)
        argv = ["report", str(folder / "runs"), "--out", str(folder / "rep"), "--no-figures"]
    elif target == "index":
        shutil.copy(tiny / "final.safetensors", folder / "a.safetensors")
        (folder / "model.safetensors.index.json").write_text(text)
        index = str(folder / "model.safetensors.index.json")
        argv = ["compare", index, index, "--arch", "mlp", "--alphas", "3", "--data-limit", "20"]
    else:
        for n in (1, 2):
            ck = folder / "trainer" / f"checkpoint-{n}"
            ck.mkdir(parents=True)
            shutil.copy(tiny / "final.safetensors", ck / "model.safetensors")
            (ck / "trainer_state.json").write_text(text)
        argv = ["trajectory", str(folder / "trainer"), "--out", str(folder / "t")]
        argv += ["--alphas", "3", "--data-limit", "20", "--no-gauss"]
    code, err = _run(argv)
    _assert_clean(argv, code, err)
