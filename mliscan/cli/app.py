"""Entry point: the typer app and the error translation around it."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import typer

from mliscan import __version__
from mliscan.cli import helptext
from mliscan.cli.errors import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    INTERRUPTED_MESSAGE,
    InterruptState,
    debug,
    report,
)
from mliscan.errors import LIBRARY_NOISE
from mliscan.paths import check_environment

# The commands in the order the help lists them; each is the function of the same name in
# the module of the same name under mliscan.cli, imported only when that command runs.
COMMANDS = (
    "compare",
    "check",
    "train",
    "adapters",
    "demo",
    "grid",
    "plane",
    "report",
    "logits",
    "runs",
    "trajectory",
    "env",
)


def _loader(name: str) -> Callable[[], Callable[..., Any]]:
    def load() -> Callable[..., Any]:
        module = importlib.import_module(f"mliscan.cli.{name}")
        return helptext.plain_help(getattr(module, name))

    return load


app = typer.Typer(
    name="mliscan",
    help=(
        "Monotonic Linear Interpolation (MLI) analysis of neural-network loss landscapes "
        "(Lucas et al., ICML 2021).\n\n"
        "Examples:\n\n"
        "  mliscan demo\n\n"
        "  mliscan compare init.safetensors final.safetensors --arch resnet20 --data cifar10 --data-dir ~/data\n\n"
        "  mliscan train --arch mlp --data digits --optimizer adam --lr 0.01 --bn --out runs/adam"
    ),
    no_args_is_help=True,
    cls=helptext.group_class({name: _loader(name) for name in COMMANDS}),
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion: typer's own mechanism
    context_settings={"help_option_names": ["-h", "--help"]},
)
# typer vendors click: its usage errors share the base class of the public typer.BadParameter.
# (Typed as any class: the vendored module is private, its classes known only at run time.)
_CLICK_ERRORS: tuple[type[Any], ...] = tuple(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def _version(value: bool) -> None:
    if value:
        print(f"mliscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """mliscan"""


def _sigterm(signum: int, frame: object) -> None:
    InterruptState.signals += 1
    raise KeyboardInterrupt  # finish like Ctrl-C: finished results stay saved, resume hint


class _Interrupts:
    """The first Ctrl-C stops the work cleanly (KeyboardInterrupt); a second one, while
    that clean-up runs, ends the process at once with exit 130 and one line, never a
    traceback (every output is written atomically, so nothing half-written is left)."""

    count = 0

    @classmethod
    def handler(cls, signum: int, frame: object) -> None:
        cls.count += 1
        InterruptState.signals += 1
        if cls.count == 1:
            raise KeyboardInterrupt
        print("mliscan: interrupted again: stopped at once", file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)


def _stdout_was_closed() -> bool:
    """Click answers a write to a closed pipe with exit 1 and flush-pacified streams; undo
    the wrappers and say what happened (exit 2: an environment problem, not the gate)."""
    if type(sys.stdout).__name__ != "PacifyFlushWrapper":
        return False
    sys.stdout = getattr(sys.stdout, "wrapped", sys.__stdout__)
    if type(sys.stderr).__name__ == "PacifyFlushWrapper":
        sys.stderr = getattr(sys.stderr, "wrapped", sys.__stderr__)
    with contextlib.suppress(OSError, ValueError):  # whatever is left goes nowhere
        if sys.stdout is not None:  # None only where Python runs without a console
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    print(CLOSED_PIPE_MESSAGE, file=sys.stderr)
    return True


CLOSED_PIPE_MESSAGE = (
    "mliscan: the output pipe was closed before everything was written (stdout); "
    "read the whole output, or write it to a file with --json PATH"
)


def _flush_stdout() -> int | None:
    """Flush stdout; when its reader has gone (``mliscan ... --json - | head``) say so once
    and return the input-error code instead of dying on the interpreter's own flush."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush goes nowhere
        print(CLOSED_PIPE_MESSAGE, file=sys.stderr)
        return EXIT_INPUT
    return None


def _forget_interrupt() -> None:
    """Keep exit code 130 after a handled Ctrl-C that landed inside string-exec'd code.

    CPython remembers a KeyboardInterrupt that escaped code run by ``exec``/``eval`` of a string
    (dataclass and namedtuple bodies, made while modules import) and, at exit, kills the process
    with SIGINT even though we caught it. Running any string code resets that memory.
    """
    exec("")  # a constant empty string: resets the unhandled-interrupt flag


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; library errors become one line and exit code 2 (MLISCAN_DEBUG=1: traceback)."""
    import signal
    import threading

    # Third-party deprecation noise (torch.jit.script in libraries we import) is not the
    # user's business: stderr keeps to mliscan's own lines.
    warnings.filterwarnings("ignore", message=LIBRARY_NOISE)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
        _Interrupts.count = 0
        signal.signal(signal.SIGINT, _Interrupts.handler)
        InterruptState.watching, InterruptState.signals = True, 0
    argv = list(sys.argv[1:] if argv is None else argv)
    if "train" in argv:
        from mliscan.cli.train import normalise_bn_argv

        argv = normalise_bn_argv(argv)
    try:
        check_environment()  # a variable mliscan cannot use is refused before any work
        rv = app(args=argv, standalone_mode=False, prog_name="mliscan")
    except typer.Exit as exc:
        rv = int(exc.exit_code or 0)
    except SystemExit as exc:
        if _stdout_was_closed():
            return EXIT_INPUT
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except (KeyboardInterrupt, typer.Abort):
        rv = EXIT_INTERRUPTED
    except BrokenPipeError:
        return _flush_stdout() or EXIT_INPUT
    except Exception as exc:
        if isinstance(exc, _CLICK_ERRORS):
            exc.show()
            return EXIT_INPUT
        if debug():
            raise
        return report(exc)
    closed = _flush_stdout()
    if closed is not None:
        return closed
    if rv == EXIT_INTERRUPTED:
        _forget_interrupt()
        if not InterruptState.reported:
            print(INTERRUPTED_MESSAGE, file=sys.stderr)  # typer turns Ctrl-C into a silent 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
