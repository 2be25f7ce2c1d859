"""Config files: a command's options not given on the command line, read from its settings
table (``[tool.mliscan.<command>]`` of the nearest pyproject.toml, ``[<command>]`` of
mliscan.toml, or ``--config PATH``).

Keys are the options' names; a mistyped key is answered with the likely one; keys that run
code (``Opt.code``) are refused from a file above the project; files are bounded before they
are parsed. ``spine.command`` reads the table for the spec fields' options, :func:`own_settings`
for a command whose options are its own (``train``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mliscan import spec as S
from mliscan.cli.helptext import HELP_ALL_OPTION, RARE, help_all_parameter
from mliscan.errors import UsageError, short_list
from mliscan.paths import deeper_than

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_OPTION = "config"


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


def own_settings(
    command: str, rare: tuple[str, ...] = ()
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """For a command whose options are its own parameters (``train``'s sweep lists): a
    ``--config`` option, and the options not given on the command line read from the
    command's settings table (``[tool.mliscan.<command>]`` of pyproject.toml, ``[<command>]``
    of mliscan.toml), converted by the option's own type as if typed; ``rare`` as in
    :func:`~mliscan.cli.spine.command`. A list value is a comma-separated list (``lr = [0.01, 0.1]``)."""

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
                if ctx is not None and given_by_user(ctx, key):
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


def given_by_user(ctx: Any, pname: str) -> bool:
    """Whether the user set ``pname`` (command line or environment), not its default."""
    source = ctx.get_parameter_source(pname)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


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
    source: Path | None
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
