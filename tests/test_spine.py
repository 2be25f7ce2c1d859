"""The command-line spine: options generated from the spec fields (the adapters' flags
included), and the help they make (``cli/helptext.py``)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mliscan.cli.app import app

COMMANDS = [
    "compare",
    "check",
    "grid",
    "plane",
    "logits",
    "report",
    "train",
    "adapters",
    "demo",
    "env",
]
SHARED = {
    # every evaluation command spells these identically
    "compare": [
        "--arch",
        "--hidden",
        "--bn",
        "--data",
        "--data-dir",
        "--data-limit",
        "--data-file",
        "--seq-len",
        "--max-tokens",
        "--split",
        "--bn-mode",
        "--bn-batch-size",
        "--dtype",
        "--device",
        "--offline",
        "--trust-pickle",
        "--alphas",
        "--config",
    ],
}
SHARED["check"] = SHARED["compare"]
SHARED["grid"] = SHARED["compare"]
SHARED["plane"] = [f for f in SHARED["compare"] if f != "--alphas"]
SHARED["logits"] = SHARED["compare"]


def _help(command: str, flag: str = "--help-all", columns: int = 200) -> str:
    """A command's help (by default every option: --help-all where it has rare ones)."""
    import typer.main

    params = typer.main.get_command(app).commands[command].params
    if not any("--help-all" in p.opts for p in params):
        flag = "--help"
    result = CliRunner().invoke(
        app, [command, flag], env={"COLUMNS": str(columns), "NO_COLOR": "1"}, terminal_width=columns
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_renders_plainly(command):
    text = _help(command)
    assert "<bool>" not in text  # flags take no value
    assert "[default: ]" not in text and "(default:  " not in text
    assert "Examples" in text or command in ("adapters",)


@pytest.mark.parametrize("command", sorted(SHARED))
def test_shared_options_are_present_with_one_help(command):
    text = _help(command)
    for flag in SHARED[command]:
        assert re.search(rf"{re.escape(flag)}\b", text), f"{command} lacks {flag}"
    # bracketed text survives (rich markup does not eat it)
    assert "hf:ORG/NAME[@REV]" in _help("compare")


def test_shared_options_have_one_name_help_and_default_everywhere():
    import typer.main

    from mliscan import spec as S
    from mliscan.cli import spine
    from mliscan.registry import arch_spec

    generated = {
        m.name
        for cls in (S.SourceSpec, arch_spec(), S.DataSpec, S.BNSpec, S.EvalSpec, spine.OutputSpec)
        for _, m in spine.params_for(cls, {})
    }
    group = typer.main.get_command(app)
    seen: dict[str, tuple] = {}
    for name in ("compare", "check", "grid", "plane", "logits"):
        for param in group.commands[name].params:
            if param.name not in generated:
                continue  # a command's own option or argument
            if param.opts[0] in ("--alphas", "--data-limit", "--batch-size"):
                continue  # per-command defaults (check: 25 alphas, 2048 examples)
            if param.opts[0] in ("--gauss", "--json", "--plot", "--help", "--config"):
                continue
            key = (param.help, param.default, tuple(param.opts), tuple(param.secondary_opts))
            if param.name in seen and name != "check":
                assert seen[param.name] == key, (name, param.name)
            seen.setdefault(param.name, key)
    assert {"bn_mode", "data_dir", "dtype", "seq_len", "offline", "hidden", "bn"} <= set(seen)


def test_defaults_are_shown():
    text = _help("compare")
    for needle in ("[default: 50]", "[default: exact]", "[default: float32]", "[default: auto]"):
        assert needle in text
    assert "[default: 25]" in _help("check")  # a command's own default, shown as such


def _run(args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "mliscan.cli.app", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["grid", "--alphas", "1", "--init", "a", "--init", "b"], "--alphas: must be at least 2"),
        (["compare", "a", "b", "--tol", "-1"], "--tol: must be at least 0"),
        (["compare", "a", "b", "--tol", "nan"], "--tol: must be a finite number"),
        (["compare", "a", "b", "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["compare", "a", "b", "--device", "quantum"], "--device: must be auto"),
        (["compare", "a", "b", "--gauss-examples", "0"], "--gauss-examples: must be at least 1"),
        (["compare", "a", "b", "--plot", "x.xyz"], "--plot: the file name must end in"),
        (["plane", "a", "b", "c", "--range", "1,0,0,1"], "--range: expects finite"),
        (["plane", "a", "b", "c", "--range", "x"], "--range: expects XMIN"),
        (["compare", "a", "b", "--bn-batch-size", "lots"], "--bn-batch-size: takes a whole number"),
        (["compare", "a", "b", "--activation", "swish"], "--activation: must be one of relu, tanh"),
        (["compare", "a", "b", "--init-scheme", "x"], "--init-scheme: must be one of default"),
    ],
)
def test_bad_values_exit_2_with_one_line(args, needle, tmp_path):
    code, _, err = _run(args, cwd=tmp_path)
    assert code == 2, err
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_check_accepts_architecture_options(tmp_path):
    code, _, err = _run(
        [
            "check",
            "i.safetensors",
            "f.safetensors",
            "--arch",
            "mlp",
            "--hidden",
            "128,128",
            "--require-monotonic",
        ],
        cwd=tmp_path,
    )
    assert code == 2 and "No such option" not in err and "i.safetensors" in err


# Words typer itself prints around a command's own texts.
_CHROME = (
    "Usage: [OPTIONS] Arguments Options [required] [default: Show this message and exit. "
    "<str> <path> <list[Path]> --help -h; N rarely used options are left out here: mliscan "
    "COMMAND --help-all shows every option."
)


def _words(text: str) -> set[str]:
    return {
        w.strip("[]().,;:'\"`-{}") for w in re.findall(r"[^\s│╭╮╰╯─]+", text.replace("\\[", "["))
    }


@pytest.mark.parametrize("command", [*COMMANDS, "trajectory", "runs"])
def test_help_at_80_columns_cuts_no_word_and_leaks_no_escape(command):
    """Every word of a command's help at 80 columns is a word of its texts (a choice cut
    mid-word, `interp` / `olate`, is not), nothing is elided, and no markup escape shows."""
    import typer.main

    cmd = typer.main.get_command(app).commands[command]
    texts = [_CHROME, cmd.help or "", command]
    for p in cmd.params:
        texts += [*p.opts, *getattr(p, "secondary_opts", []), str(p.metavar or "")]
        texts += [str(getattr(p, a, "") or "") for a in ("help", "show_default", "default")]
        texts += [str(getattr(p, a, "") or "") for a in ("rich_help_panel", "min", "max")]
    known = _words(" ".join(texts))
    for flag in ("--help", "--help-all"):
        out = _help(command, flag, columns=80)
        assert "…" not in out and "\\[" not in out, out
        cut = sorted(
            w
            for w in _words(out)
            if len(w) > 2
            and re.search("[a-z]", w)
            and w not in known
            and not re.fullmatch(r"\d+<=x<=\d+|x>=\d+", w)
        )
        assert not cut, f"{command} {flag}: words not in its texts (cut?): {cut}"


@pytest.mark.parametrize("command", ["compare", "check", "logits"])
def test_help_fits_in_about_two_screens_and_help_all_shows_the_rest(command):
    brief, full = _help(command, "--help", 80), _help(command, "--help-all", 80)
    assert len(brief.splitlines()) <= 125, len(brief.splitlines())
    assert "--help-all shows" in brief
    for flag in ("--bn-variance", "--offline", "--seq-len", "--trust-pickle"):
        assert flag not in brief and flag in full
    for flag in ("--arch", "--data", "--bn-mode", "--alphas", "--device", "--config", "--model"):
        assert flag in brief


def test_adapter_flags_are_options_of_every_evaluation_command():
    """The flags the adapters declare (adapters/flags.py) are options of each command that
    takes an architecture, with their own help, in the Architecture panel after --arch."""
    import typer.main

    from mliscan.registry import arch_flags

    group = typer.main.get_command(app)
    for name in ("compare", "check", "grid", "plane", "logits", "trajectory"):
        params = [p for p in group.commands[name].params if p.name != "help"]
        names = [p.name for p in params]
        after = names[names.index("arch") + 1 :][: len(arch_flags())]
        assert after == [f.name for f in arch_flags()], name
        for flag in arch_flags():
            param = params[names.index(flag.name)]
            assert param.help.startswith(flag.help) and param.rich_help_panel == "Architecture"


def test_train_help_shows_training_defaults():
    """train --help shows what training uses, not what inspection reads off a checkpoint."""
    text = _help("train", "--help-all", 200)
    assert "from the checkpoint" not in text and "from metadata" not in text
    assert "128,128 for mlp" in text and "[default: (off)]" in text
