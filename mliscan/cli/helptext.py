"""How mliscan's help reads: ``--help-all`` for rarely used options, flags without a value
metavar, help text shown as written (escaped once, prose reflowed).

Commands are typer commands of :func:`command_class` (the root: :func:`group_class`); a
command's function names its rarely used options in its ``RARE`` attribute (set by
``spine.command`` and ``settings.own_settings``), which ``--help`` leaves to ``--help-all``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

# The attribute of a command's function naming its rarely used options (parameter names).
RARE = "mliscan_rare"
# Marks a command whose help plain_help has escaped already.
_PLAIN = "_plain_help"


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


class LazyCommands(MutableMapping[str, Any]):
    """The root's commands, each built the first time it is looked up: a short command
    imports its own module only, not every command's (about 0.15 s of a cold start).
    Iterating (``--help``, completion) builds them all, in the declared order."""

    def __init__(
        self, built: MutableMapping[str, Any], names: Sequence[str], load: Callable[[str], Any]
    ) -> None:
        self._built = dict(built)
        self._names = list(names)
        self._load = load

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._names:
                raise KeyError(name)
            try:
                self._built[name] = self._load(name)
            except KeyError as exc:  # a bug in the command's module, not "no such command"
                raise RuntimeError(f"building the command {name!r} failed: {exc!r}") from exc
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._built.pop(name, None)
        self._names = [n for n in self._names if n != name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._names, *self._built]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._names, *self._built]))

    def __contains__(self, name: object) -> bool:
        return name in self._built or name in self._names


def group_class(commands: Mapping[str, Callable[[], Callable[..., Any]]]) -> type:
    """The same for the root command (--version, --install-completion, --help); its
    ``commands`` (name -> a function returning the command's function) are built lazily
    (:class:`LazyCommands`) as commands of :func:`command_class`."""
    from typer.core import TyperGroup
    from typer.main import get_command_from_info
    from typer.models import CommandInfo

    class MliscanGroup(TyperGroup):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.commands = LazyCommands(self.commands, list(commands), self._build)

        def _build(self, name: str) -> Any:
            info = CommandInfo(name=name, cls=command_class(), callback=commands[name]())
            return get_command_from_info(
                info, pretty_exceptions_short=True, rich_markup_mode=self.rich_markup_mode
            )

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
    if getattr(fn, _PLAIN, False):
        return fn
    if fn.__doc__:
        fn.__doc__ = escape(_reflowed(inspect.cleandoc(fn.__doc__)))
    sig = inspect.signature(fn, eval_str=True)  # a new evaluation makes new infos: keep it
    fn.__signature__ = sig  # type: ignore[attr-defined]  # read by inspect.signature
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
    setattr(fn, _PLAIN, True)
    return fn


def _reflowed(doc: str) -> str:
    """A docstring's prose paragraphs as one line each (the terminal wraps them at its own
    width, not at the source's); indented paragraphs (examples) keep their lines."""
    paragraphs = doc.split("\n\n")
    return "\n\n".join(
        p if any(line.startswith((" ", "\t")) for line in p.splitlines()) else " ".join(p.split())
        for p in paragraphs
    )
