"""Command-line options and config-file keys generated from the spec fields.

A command is written as ``def body(own typer parameters..., specs: Specs) -> int`` and
declared with ``@spine.command("compare", SourceSpec, ArchSpec, DataSpec, EvalSpec, ...)``.
The decorator adds one typer option per spec field (flag, type, help, default and panel from
the field; nothing is declared twice), reads ``[tool.mliscan.<command>]`` of the nearest
pyproject.toml or the ``[<command>]`` table of mliscan.toml for the options not given on the
command line, and constructs each spec, which validates itself. So every command spells,
documents, defaults and checks a shared option identically, and a config key is exactly the
option's name.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape

from mliscan import spec as S
from mliscan.cli.errors import real_interrupt, user_code_error
from mliscan.errors import UsageError, short_list
from mliscan.paths import deeper_than

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclasses.dataclass(frozen=True)
class OutputSpec(S.Spec):
    """Where a command's result goes (never a number)."""

    concern: typing.ClassVar[str] = "output"
    json_out: str | None = S.opt(
        None,
        "Write the result as JSON to PATH ('-' for stdout).",
        flag="--json",
        panel=S.OUT,
        numeric=False,
        metavar="PATH",
    )
    plot: str | None = S.opt(
        None,
        "Write a figure to PATH (.png, .svg or .pdf).",
        panel=S.OUT,
        numeric=False,
        metavar="PATH",
    )
    quiet: bool = S.opt(False, "No progress output.", panel=S.OUT, numeric=False, short="-q")

    def check(self) -> None:
        if self.plot is not None and Path(self.plot).suffix.lower() not in PLOT_SUFFIXES:
            raise self.fail(
                "plot", f"the file name must end in .png, .svg or .pdf, got {self.plot!r}"
            )
        if self.json_out not in (None, "-") and Path(self.json_out).is_dir():
            raise self.fail("json_out", f"{self.json_out} is a folder; name a file")


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


@dataclasses.dataclass(frozen=True)
class Param:
    """One generated option: which spec field it sets."""

    spec: type
    field: str
    name: str
    """The Python parameter name (also the config key, with dashes)."""


class Specs(dict):
    """The constructed specs of one invocation, by class; ``config`` names the settings file."""

    config: Path | None = None
    context: Any = None
    """The command's click context (what the user gave, for ``--launcher``)."""

    def __getitem__(self, cls: type[Any]) -> Any:
        return super().__getitem__(cls)


def _cli_type(tp: Any, o: S.Opt) -> Any:
    """The type typer parses; validation beyond parsing is the spec's."""
    if o.parse is not None:
        return str | None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple:
        return list[str] | None
    if origin is Literal:
        return str
    if origin in (typing.Union, __import__("types").UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            base = _cli_type(inner[0], o)
            return base if base is bool else base | None
    return tp


_METAVARS: dict[Any, str] = {int | None: "N", int: "N", float | None: "X", float: "X"}


def _help(f: dataclasses.Field, o: S.Opt, tp: Any) -> str:
    text = o.help
    literal = typing.get_origin(tp) is Literal
    if o.choices is not None or literal:
        values = o.choices if o.choices is not None else typing.get_args(tp)
        shown = ", ".join(str(v) for v in values)
        in_metavar = o.metavar is None and _choices_metavar(S.flag_of(f), values).count("|")
        if shown not in text and not in_metavar:
            text = f"{text} One of: {shown}."
    return escape(text)


# Choices longer than this are named by a word (MODE, DTYPE) in the option's value column,
# and listed in its help: an 80-column terminal then never cuts a choice mid-word.
MAX_CHOICES_METAVAR = 16


def _choices_metavar(flag: str, values: Any) -> str:
    joined = "|".join(map(str, values))
    return joined if len(joined) <= MAX_CHOICES_METAVAR else flag.rsplit("-", 1)[-1].upper()


def params_for(cls: type, overrides: dict[str, Any]) -> list[tuple[inspect.Parameter, Param]]:
    """One typer option per CLI field of ``cls``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        o = S.option_of(f)
        if o is None or not o.cli:
            continue
        tp = hints[f.name]
        flag = S.flag_of(f)
        name = S.argument_name(f)  # also the Python API's argument (mliscan.api)
        default = overrides.get(name, f.default)
        if cls is S.DataSpec and f.name == "name" and name not in overrides:
            default = None  # from the checkpoint's metadata, else the adapter's
        if isinstance(default, tuple):
            default = None
        if o.parse is not None and default is None:
            shown: Any = o.show or True
        elif o.parse is not None:
            shown = str(default)
        else:
            shown = o.show if (default is None and o.show) else True
        decls = [flag, *([o.short] if o.short else [])]
        is_bool = tp is bool or (typing.get_origin(tp) is not None and bool in typing.get_args(tp))
        if is_bool:
            decls = [f"{flag}/{o.negative}"] if o.negative else decls
            shown = (o.show if default is None else True) if o.negative else False
        metavar = o.metavar
        if is_bool:
            metavar = ""  # a flag takes no value
        elif metavar is None:
            values = o.choices or (
                typing.get_args(tp) if typing.get_origin(tp) is Literal else None
            )
            metavar = (
                _choices_metavar(flag, values)
                if values
                else _METAVARS.get(_cli_type(tp, o), "TEXT")
            )
        info = typer.Option(
            *decls,
            help=_help(f, o, tp),
            rich_help_panel=o.panel,
            show_default=shown,
            metavar=metavar,
        )
        info._escaped = True  # type: ignore[attr-defined]  # by _help; plain_help leaves it
        annotation = Annotated[_cli_type(tp, o), info]
        if o.parse is not None and default is not None:
            default = str(default)
        p = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        out.append((p.replace(annotation=annotation), Param(cls, f.name, name)))
    return out


CONFIG_OPTION = "config"
CONTEXT = "mliscan_context"


def command(
    name: str,
    *concerns: type,
    defaults: dict[str, Any] | None = None,
    exclude: tuple[str, ...] = (),
    rare: tuple[str, ...] = (),
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Declare a command whose options are the fields of ``concerns`` (see module doc).

    ``defaults`` overrides a field's default for this command (shown in its help);
    ``exclude`` names fields that do not apply to it (they keep their default); ``rare``
    names the command's own options that ``--help`` leaves to ``--help-all`` (generated
    options are rare when their field says so, ``opt(..., rare=True)``)."""
    defaults = defaults or {}
    classes = list(concerns)
    if S.EvalSpec in classes and S.BNSpec not in classes:
        classes.insert(classes.index(S.EvalSpec), S.BNSpec)

    def deco(body: Callable[..., int]) -> Callable[..., int]:
        sig = inspect.signature(body, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "specs"]
        generated: list[tuple[inspect.Parameter, Param]] = []
        fixed: list[tuple[Param, Any]] = []
        for cls in classes:
            generated += [(p, m) for p, m in params_for(cls, defaults) if m.field not in exclude]
        names = [p.name for p in own] + [p.name for p, _ in generated]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise TypeError(f"{name}: option(s) declared twice: {sorted(dupes)}")
        config_param = config_parameter(name)
        params = [
            p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
            if p.kind == inspect.Parameter.POSITIONAL_ONLY
            else p
            for p in own
        ]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        params += [p for p, _ in generated] + [config_param]
        # typer passes the click context to a parameter annotated typer.Context
        params.append(
            inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        )
        by_name = {p.name: (p, m) for p, m in generated}
        code_keys = frozenset(n for n, (_p, m) in by_name.items() if _names_code(m))

        @functools.wraps(body)
        def wrapper(**kwargs: Any) -> int:
            ctx = kwargs.pop(CONTEXT, None)
            config_path = kwargs.pop(CONFIG_OPTION, None)
            kwargs.pop(HELP_ALL_OPTION, None)
            settings, source = load_settings(name, config_path, set(by_name), code_keys)
            values: dict[type, dict[str, Any]] = {cls: {} for cls in classes}
            where: dict[type, dict[str, str]] = {cls: {} for cls in classes}
            used: list[str] = []
            for pname, (_p, m) in by_name.items():
                value = kwargs.pop(pname)
                given = ctx is None or _given(ctx, pname)
                if not given and pname in settings:
                    value = settings[pname]
                    where[m.spec][m.field] = f"{source}: {pname.replace('_', '-')}"
                    used.append(pname)
                f = next(x for x in dataclasses.fields(m.spec) if x.name == m.field)
                o = S.option_of(f)
                if o is None:  # pragma: no cover - only declared fields are generated
                    raise TypeError(f"{m.spec.__name__}.{m.field} has no declaration")
                if o.parse is not None and isinstance(value, str):
                    try:
                        value = o.parse(value)
                    except S.SpecError as exc:
                        raise S.SpecError(
                            where[m.spec].get(m.field, S.flag_of(f)), exc.problem
                        ) from None
                if isinstance(value, list):
                    value = tuple(value)
                if value is None and isinstance(f.default, tuple):
                    value = f.default
                values[m.spec][m.field] = value
            for m, value in fixed:  # options left out of this command keep its default
                values[m.spec][m.field] = value
            if source is not None:
                announce(source, name, used, code_keys)
            specs = Specs()
            specs.config = source
            specs.context = ctx
            for cls in classes:
                if cls is S.EvalSpec and S.BNSpec in specs:
                    values[cls]["bn"] = specs[S.BNSpec]
                specs[cls] = S.build(cls, values[cls], where[cls])
            try:
                return body(**kwargs, specs=specs)
            except BaseException as exc:
                # a command's own code never exits or interrupts itself: what does came from
                # the user's code (a --model module, a trusted pickle), and must not end the
                # process silently or with a gate's success
                if isinstance(exc, Exception) or (
                    isinstance(exc, KeyboardInterrupt) and real_interrupt()
                ):
                    raise
                raise user_code_error(exc, _user_code_named(specs)) from exc

        rare_names = {n for n, (_p, m) in by_name.items() if _opt_of(m).rare} | set(rare)
        if rare_names:
            params.append(help_all_parameter())
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {}
        setattr(wrapper, RARE, frozenset(rare_names))
        return wrapper

    return deco


def config_parameter(command: str) -> inspect.Parameter:
    """The ``--config PATH`` option of ``command``."""
    info = typer.Option(
        help=escape(
            f"Settings file (default: [tool.mliscan.{command}] of the nearest pyproject.toml, "
            f"or [{command}] of mliscan.toml): option names as keys; the command line wins; "
            "keys that run code only from the project's own files."
        ),
        show_default=False,
        metavar="PATH",
        rich_help_panel=S.OUT,
    )
    info._escaped = True  # type: ignore[attr-defined]
    return inspect.Parameter(
        CONFIG_OPTION,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, info],
    )


def _opt_of(m: Param) -> S.Opt:
    f = next(x for x in dataclasses.fields(m.spec) if x.name == m.field)
    o = S.option_of(f)
    if o is None:  # pragma: no cover - only declared fields are generated
        raise TypeError(f"{m.spec.__name__}.{m.field} has no declaration")
    return o


# The attribute of a command's function naming its rarely used options (parameter names).
RARE = "mliscan_rare"


def own_settings(
    command: str, rare: tuple[str, ...] = ()
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """For a command whose options are its own parameters (``train``'s sweep lists): a
    ``--config`` option, and the options not given on the command line read from the
    command's settings table (``[tool.mliscan.<command>]`` of pyproject.toml, ``[<command>]``
    of mliscan.toml), converted by the option's own type as if typed; ``rare`` as in
    :func:`command`. A list value is a comma-separated list (``lr = [0.01, 0.1]``)."""

    def deco(body: Callable[..., int]) -> Callable[..., int]:
        sig = inspect.signature(body, eval_str=True)
        params = [*sig.parameters.values(), config_parameter(command)]
        if rare:
            params.append(help_all_parameter())
        context = next((p.name for p in params if p.annotation is typer.Context), None)

        @functools.wraps(body)
        def wrapper(**kwargs: Any) -> int:
            config_path = kwargs.pop(CONFIG_OPTION, None)
            kwargs.pop(HELP_ALL_OPTION, None)
            ctx = kwargs.get(context) if context is not None else None
            known = {k for k in kwargs if k != context}
            settings, source = load_settings(command, config_path, known)
            used = []
            clicked = {p.name: p for p in ctx.command.params} if ctx is not None else {}
            for key, value in settings.items():
                if ctx is not None and _given(ctx, key):
                    continue
                param = clicked.get(key)
                if isinstance(value, list) and param is not None and not param.multiple:
                    value = ",".join(map(str, value))
                if param is not None:
                    try:
                        value = param.process_value(ctx, value)
                    except Exception as exc:  # click's BadParameter, in the file's words
                        raise UsageError(
                            f"{source}: {key.replace('_', '-')} = {_short(value)}: "
                            f"{getattr(exc, 'message', exc)}"
                        ) from None
                kwargs[key] = value
                used.append(key)
            if source is not None:
                announce(source, command, used, frozenset())
            return body(**kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        setattr(wrapper, RARE, frozenset(rare))
        return wrapper

    return deco


def _user_code_named(specs: Specs) -> str | None:
    """How the user named the code a command runs (``--model X``, ``--trust-pickle``)."""
    arch, source = specs.get(S.ArchSpec), specs.get(S.SourceSpec)
    if arch is not None and arch.model is not None:
        return f"--model {arch.model}"
    if source is not None and source.trust_pickle:
        return "a checkpoint's pickled code (--trust-pickle)"
    return None


def _given(ctx: Any, pname: str) -> bool:
    """Whether the user set ``pname`` (command line or environment), not its default."""
    source = ctx.get_parameter_source(pname)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _names_code(m: Param) -> bool:
    """Whether the field ``m`` sets makes mliscan import or run code (``Opt.code``)."""
    f = next(x for x in dataclasses.fields(m.spec) if x.name == m.field)
    o = S.option_of(f)
    return o is not None and o.code


SETTINGS_FILES = ("mliscan.toml", "pyproject.toml")


def table_name(path: Path, command: str) -> str:
    return f"[tool.mliscan.{command}]" if path.name == "pyproject.toml" else f"[{command}]"


# A settings file is small: larger ones, or deeper ones, are refused before they are parsed
# further (a hostile file in a parent folder must not end the process).
MAX_SETTINGS_BYTES = 4 << 20
MAX_SETTINGS_DEPTH = 16


def _toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SETTINGS_BYTES + 1)
        if len(raw) > MAX_SETTINGS_BYTES:
            raise UsageError(
                f"{path}: larger than {MAX_SETTINGS_BYTES >> 20} MiB; not a settings file"
            )
        return tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise UsageError(f"{path}: nested too deeply to read as a settings file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(
            f"{path}: not a readable TOML file ({' '.join(str(exc).split())[:200]})"
        ) from exc


def _table(data: dict[str, Any], keys: tuple[str, ...], path: Path) -> Any:
    """``data[k0][k1]...``, None where a key is absent; a non-table on the way is an error."""
    node: Any = data
    for i, key in enumerate(keys):
        if not isinstance(node, dict):
            name = ".".join(keys[:i])
            raise UsageError(
                f"{path}: {name} must be a table, got {type(node).__name__} {_short(node)}"
            )
        node = node.get(key)
        if node is None:
            return None
    return node


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def read_settings(path: Path, command: str) -> dict[str, Any] | None:
    """The settings table for ``command`` in one TOML file (None when it has none)."""
    data = _toml(path)
    table = table_name(path, command)
    if path.name == "pyproject.toml":
        node = _table(data, ("tool", "mliscan", command), path)
    else:
        node = data.get(command)
        if (
            node is None
            and command == "check"
            and not any(isinstance(v, dict) for v in data.values())
        ):
            node, table = data, "top level"  # the first form of mliscan.toml: flat check keys
    if node is None:
        return None
    if not isinstance(node, dict):
        raise UsageError(f"{path}: {table} must be a table of settings, got {_short(node)}")
    if deeper_than(node, MAX_SETTINGS_DEPTH):
        raise UsageError(f"{path}: {table} nests more than {MAX_SETTINGS_DEPTH} levels deep")
    return node


def project_root(start: Path) -> Path:
    """The folder of the project the user is in: the nearest folder at or above ``start``
    that holds ``.git`` (a repository's root); ``start`` itself outside any repository."""
    for folder in [start, *start.parents]:
        if (folder / ".git").exists():
            return folder
    return start


def _inside(folder: Path, root: Path) -> bool:
    return folder == root or root in folder.parents


def find_settings(command: str, start: Path) -> tuple[dict[str, Any], Path | None, bool]:
    """(the table, its file, whether that file belongs to the project): the first
    mliscan.toml or pyproject.toml holding a table for ``command``, from ``start`` up
    through its parents. A file in ``start``, or between it and the repository root, is the
    project's own; one above the root (a shared scratch or home folder) is not."""
    root = project_root(start)
    for folder in [start, *start.parents]:
        for fname in SETTINGS_FILES:
            path = folder / fname
            if path.is_file():
                found = read_settings(path, command)
                if found is not None:
                    return found, path, _inside(folder, root)
    return {}, None, True


def load_settings(
    command: str, explicit: Path | None, known: set[str], code_keys: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], Path | None]:
    """(settings by parameter name, the file they came from).

    Keys in ``code_keys`` make mliscan import or run code (``--model``, ``--trust-pickle``):
    a settings file above the project (see :func:`find_settings`) that sets one is refused,
    naming the file and the key, so a file in a shared parent folder cannot run code in
    every project below it. ``--config PATH`` is the user's own choice on the command line."""
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"--config {explicit}: no such settings file")
        node, source, own = read_settings(explicit, command) or {}, explicit, True
    else:
        node, source, own = find_settings(command, Path.cwd())
    settings = {str(k).replace("-", "_"): v for k, v in node.items()}
    code = sorted(k.replace("_", "-") for k in settings if k in code_keys)
    if code and not own:
        raise UsageError(
            f"{source}: {', '.join(code)} would import or run code, and this settings file is "
            f"above the project ({project_root(Path.cwd())}); settings files outside the "
            f"project cannot run code: give --{code[0]} on the command line, or set it in the "
            "project's own mliscan.toml or pyproject.toml"
        )
    unknown = sorted(str(k)[:40] for k in node if str(k).replace("-", "_") not in known)
    if unknown:
        names = sorted(k.replace("_", "-") for k in known)
        guesses = [
            f"{k} -> {close[0]}"
            for k in unknown
            if (close := difflib.get_close_matches(k.replace("_", "-"), names, n=1, cutoff=0.6))
        ]
        hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        raise UsageError(
            f"{source}: unknown {command} setting(s) {short_list(unknown)}{hint}; known: "
            f"{', '.join(names)}"
        )
    return settings, source


def announce(source: Path, command: str, used: list[str], code_keys: frozenset[str]) -> None:
    """Name the settings file a command reads, and the keys it took from it, on stderr."""
    keys = [k.replace("_", "-") + (" (runs code)" if k in code_keys else "") for k in used]
    shown = ", ".join(keys) if keys else "no setting the command line did not give"
    print(f"settings from {source} {table_name(source, command)}: {shown}", file=sys.stderr)


def _flags_without_metavar(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # a flag takes no value
    return params


HELP_ALL = "mliscan_help_all"
HELP_ALL_OPTION = "help_all"


def _show_all(ctx: Any, param: Any, value: Any) -> None:
    """``--help-all``: the help with every option (as ``--help`` prints it, then exit)."""
    if not value or ctx.resilient_parsing:
        return
    ctx.meta[HELP_ALL] = True
    typer.echo(ctx.get_help(), color=ctx.color)
    ctx.exit()


def help_all_parameter() -> inspect.Parameter:
    """``--help-all`` of a command with rarely used options (its value is never used)."""
    info = typer.Option(
        "--help-all",
        is_eager=True,
        callback=_show_all,
        help="Show every option, the rarely used ones too, and exit.",
        show_default=False,
    )
    info._escaped = True  # type: ignore[attr-defined]
    return inspect.Parameter(
        HELP_ALL_OPTION,
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, info],
    )


def command_class() -> type:
    """The typer command class of every mliscan command: its flags (-h/--help included)
    show no value metavar in the help table; its rarely used options (``RARE`` of the
    command's function) are left out of ``--help`` and shown by ``--help-all``, so the
    help fits in about two screens."""
    from typer.core import TyperCommand

    class MliscanCommand(TyperCommand):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.rare: frozenset[str] = getattr(self.callback, RARE, frozenset())
            self.hiding: frozenset[str] = frozenset()

        def get_params(self, ctx: Any) -> list[Any]:
            params = _flags_without_metavar(super().get_params(ctx))
            return [p for p in params if p.name not in self.hiding]

        def format_help(self, ctx: Any, formatter: Any) -> None:
            shown = {p.name for p in self.params if not getattr(p, "hidden", False)}
            left_out = self.rare & shown if not ctx.meta.get(HELP_ALL) else frozenset()
            epilog = self.epilog
            if left_out:
                self.hiding = frozenset(left_out)
                self.epilog = escape(
                    f"{len(left_out)} rarely used options are left out here: "
                    f"mliscan {self.name} --help-all shows every option."
                )
            try:
                super().format_help(ctx, formatter)
            finally:
                self.hiding, self.epilog = frozenset(), epilog

    return MliscanCommand


def group_class() -> type:
    """The same for the root command (--version, --install-completion, --help)."""
    from typer.core import TyperGroup

    class MliscanGroup(TyperGroup):
        def get_params(self, ctx: Any) -> list[Any]:
            return _flags_without_metavar(super().get_params(ctx))

    return MliscanGroup


_OWN_METAVARS: dict[Any, str] = {
    bool: "",  # a flag takes no value
    bool | None: "",
    int: "N",
    int | None: "N",
    list[int] | None: "N",
    float: "X",
    float | None: "X",
    Path: "PATH",
    Path | None: "PATH",
}


def plain_help(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Help text shown as written: brackets such as ``[@REV]`` are not rich markup.

    Escapes the docstring and every own option's help once (generated options are escaped
    when made)."""
    if getattr(fn, "_plain_help", False):
        return fn
    if fn.__doc__:
        fn.__doc__ = escape(_reflowed(inspect.cleandoc(fn.__doc__)))
    sig = inspect.signature(fn, eval_str=True)  # a new evaluation makes new infos: keep it
    fn.__signature__ = sig
    for p in sig.parameters.values():
        args = typing.get_args(p.annotation)
        for info in args[1:]:
            if getattr(info, "metavar", 1) is None and type(info).__name__ == "OptionInfo":
                # the same value names as the generated options: N, X, PATH, TEXT
                info.metavar = _OWN_METAVARS.get(args[0], "TEXT")
            text = getattr(info, "help", None)
            if isinstance(text, str) and not getattr(info, "_escaped", False):
                info.help = escape(text)
                info._escaped = True
    fn._plain_help = True
    return fn


def _reflowed(doc: str) -> str:
    """A docstring's prose paragraphs as one line each (the terminal wraps them at its own
    width, not at the source's); indented paragraphs (examples) keep their lines."""
    paragraphs = doc.split("\n\n")
    return "\n\n".join(
        p if any(line.startswith((" ", "\t")) for line in p.splitlines()) else " ".join(p.split())
        for p in paragraphs
    )


def annotated(cls: type, field_name: str, **changes: Any) -> Any:
    """The typer annotation of one spec field, for commands whose options are otherwise
    their own (``train``'s sweep lists): the same flag, help, panel and metavar.
    ``changes`` sets the option's ``help`` or ``show_default`` where the command means
    another default (``train --hidden``: the architecture's widths, not the checkpoint's)."""
    for p, m in params_for(cls, {}):
        if m.field == field_name:
            if not changes:
                return p.annotation
            tp, info = typing.get_args(p.annotation)
            info = copy.copy(info)
            for key, value in changes.items():
                setattr(info, key, escape(value) if key == "help" else value)
            return Annotated[tp, info]
    raise KeyError(f"{cls.__name__}.{field_name} is not a command-line field")
