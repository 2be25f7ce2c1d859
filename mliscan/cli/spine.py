"""Command-line options generated from the spec fields.

A command is written as ``def body(own typer parameters..., specs: Specs) -> int`` and
declared with ``@spine.command("compare", SourceSpec, ArchSpec, DataSpec, EvalSpec, ...)``.
The decorator adds one typer option per spec field (flag, type, help, default and panel from
the field; nothing is declared twice), reads the command's settings table for the options not
given on the command line (``cli/settings.py``), and constructs each spec, which validates
itself. So every command spells, documents, defaults and checks a shared option identically,
and a config key is exactly the option's name. ``ArchSpec`` stands for its subclass with the
adapters' flags (``registry.arch_spec``: ``--hidden``, ``--bn``, ...).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape

from mliscan import spec as S
from mliscan.cli.errors import real_interrupt, user_code_error
from mliscan.cli.helptext import HELP_ALL_OPTION, RARE, help_all_parameter
from mliscan.cli.settings import (
    CONFIG_OPTION,
    announce,
    config_parameter,
    given_by_user,
    load_settings,
)
from mliscan.registry import arch_spec


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


def params_for(
    cls: type[S.Spec], overrides: dict[str, Any]
) -> list[tuple[inspect.Parameter, Param]]:
    """One typer option per CLI field of ``cls``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in cls.cli_fields():
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
        annotation: Any = Annotated[_cli_type(tp, o), info]  # built at run time: not an alias
        if o.parse is not None and default is not None:
            default = str(default)
        p = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        out.append((p.replace(annotation=annotation), Param(cls, f.name, name)))
    return out


CONTEXT = "mliscan_context"


def command(
    name: str,
    *concerns: type[S.Spec],
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
    # ArchSpec is built with the adapters' flags; the command finds it as specs[ArchSpec]
    classes = [arch_spec() if c is S.ArchSpec else c for c in concerns]
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
                given = ctx is None or given_by_user(ctx, pname)
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
                declared = S.ArchSpec if issubclass(cls, S.ArchSpec) else cls
                specs[declared] = S.build(cls, values[cls], where[cls])
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
        # read by inspect.signature (typeshed declares no __signature__ on callables)
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {}
        setattr(wrapper, RARE, frozenset(rare_names))
        return wrapper

    return deco


def _opt_of(m: Param) -> S.Opt:
    f = next(x for x in dataclasses.fields(m.spec) if x.name == m.field)
    o = S.option_of(f)
    if o is None:  # pragma: no cover - only declared fields are generated
        raise TypeError(f"{m.spec.__name__}.{m.field} has no declaration")
    return o


def _user_code_named(specs: Specs) -> str | None:
    """How the user named the code a command runs (``--model X``, ``--trust-pickle``)."""
    arch, source = specs.get(S.ArchSpec), specs.get(S.SourceSpec)
    if arch is not None and arch.model is not None:
        return f"--model {arch.model}"
    if source is not None and source.trust_pickle:
        return "a checkpoint's pickled code (--trust-pickle)"
    return None


def _names_code(m: Param) -> bool:
    """Whether the field ``m`` sets makes mliscan import or run code (``Opt.code``)."""
    f = next(x for x in dataclasses.fields(m.spec) if x.name == m.field)
    o = S.option_of(f)
    return o is not None and o.code


def annotated(cls: type[S.Spec], field_name: str, **changes: Any) -> Any:
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
