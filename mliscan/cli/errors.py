"""The one table that turns library errors into one-line messages and exit codes.

Exit codes: 0 ran (and every gate held), 1 a gated property failed, 2 usage or input error,
3 an internal error (a bug: please report it). Set MLISCAN_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from mliscan import errors

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
INTERRUPTED_MESSAGE = (
    "mliscan: interrupted: finished outputs are complete and nothing partial was written "
    "(outputs are written atomically); rerun the same command to start again"
)


class InterruptState:
    """``reported``: set by a command that printed its own interruption message (with how to
    resume). ``watching``: the CLI's signal handlers are installed (``app.main``), and
    ``signals`` counts the Ctrl-C and SIGTERM they received, so that a KeyboardInterrupt a
    user's module raised itself is told from a real interruption."""

    reported = False
    watching = False
    signals = 0


def real_interrupt() -> bool:
    """Whether the KeyboardInterrupt being handled came from a signal (Ctrl-C, SIGTERM), not
    from code that raised it itself. Without mliscan's handlers (the app run other than
    through ``main``) every interrupt is taken as real."""
    return not InterruptState.watching or InterruptState.signals > 0


DEBUG_VAR = "MLISCAN_DEBUG"

# (error class, label): the first matching row wins.
TABLE: list[tuple[type[BaseException], str]] = [
    (errors.UnsafeCheckpointError, "unsafe checkpoint"),
    (errors.CheckpointNotFoundError, "checkpoint not found"),
    (errors.CheckpointFormatError, "bad checkpoint"),
    (errors.CheckpointMismatchError, "checkpoints do not match"),
    (errors.NonFiniteWeightsError, "non-finite weights"),
    (errors.UnknownAdapterError, "unknown architecture"),
    (errors.AdapterOptionError, "bad architecture option"),
    (errors.DataNotFoundError, "data not found"),
    (errors.DataError, "bad data"),
    (errors.HubError, "hub"),
    (errors.UserCodeError, "your code"),
    (errors.UsageError, "usage"),
    (errors.MliscanError, "error"),
]


def debug() -> bool:
    return os.environ.get(DEBUG_VAR, "") not in {"", "0"}


# A hostile environment is not a bug: what the operating system refused, and what to do.
OS_FIXES = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; write elsewhere or fix the permissions",
    errno.EPERM: "operation not permitted; write elsewhere or fix the permissions",
    errno.EISDIR: "it is a folder; name a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter one",
    errno.EEXIST: "it already exists",
    errno.ENOENT: "no such file or folder",
    errno.EFBIG: "the file is larger than allowed (ulimit -f); write elsewhere or lift the limit",
    errno.EMFILE: "too many open files (ulimit -n)",
}


# Libraries that report an OS refusal in their own exception, its errno only in the text:
# safetensors (SafetensorError "... (os error 28)"), polars (ComputeError "... (os error
# 27)", or an OSError without errno), torch's writers (RuntimeError "... strerror: Permission
# denied"), and transformers, timm and huggingface_hub re-raising with the cause chained.
_WRAPPING_LIBRARIES = ("safetensors", "polars", "transformers", "timm", "huggingface_hub", "torch")
_ERRNO_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
_PATH_TEXT = re.compile(
    r'at path "([^"]+)"|\(os error \d+\): (\S.*)$|\[Errno \d+\] [^:]+: \'([^\']+)\''
)


def _strerrors() -> dict[str, int]:
    return {os.strerror(code): code for code in OS_FIXES}


def os_refusal(exc: BaseException) -> tuple[int, str | None, BaseException] | None:
    """(errno, file or None, the exception that says so) when ``exc`` or an exception it was
    raised from is an OS refusal of ``OS_FIXES``: an OSError with its errno, or a library's
    exception whose text carries it (``(os error 28)``, ``[Errno 30]``, the OS's own words)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in OS_FIXES:
            return current.errno, current.filename, current
        library = type(current).__module__.split(".")[0] in _WRAPPING_LIBRARIES
        if library or isinstance(current, (OSError, RuntimeError)):
            text = str(current)
            match = _ERRNO_TEXT.search(text)
            code = int(match.group(1) or match.group(2)) if match else None
            if code is None:
                code = next((c for words, c in _strerrors().items() if words in text), None)
            if code in OS_FIXES:
                path = _PATH_TEXT.search(text)
                where = next((g for g in path.groups() if g), None) if path else None
                return code, where, current
        current = current.__cause__ or current.__context__
    return None


def environment_message(exc: BaseException) -> str | None:
    """One line for an error the environment caused (OS refusals, network, memory), or None."""
    if isinstance(exc, MemoryError):
        return (
            "out of memory: lower --data-limit, --batch-size or --alphas, or use a larger machine"
        )
    refusal = os_refusal(exc)
    if refusal is not None:
        code, where, said = refusal
        line = f"cannot use {where if where is not None else 'a file'}: {OS_FIXES[code]}"
        if not isinstance(said, OSError) or said is not exc:
            library = type(said).__module__.split(".")[0]
            line += f" (reported by {library if library != 'builtins' else type(said).__name__})"
        return line
    if type(exc).__module__.startswith(("httpx", "requests", "urllib3")) or isinstance(
        exc, (ConnectionError, TimeoutError)
    ):
        return (
            "cannot reach the network (the Hugging Face Hub?); pass --offline to use the "
            f"cached copy ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        )
    return None


def _library_folders() -> tuple[str, ...]:
    """Folders whose code is not the user's: mliscan (and its adapters), the standard
    library, installed packages, and the caches of generated code (torch.compile)."""
    import sysconfig
    from pathlib import Path

    import mliscan

    here = Path(mliscan.__file__).resolve().parent
    folders = {str(here), str(here.parent / "adapters")}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(name)
        if path:
            folders.add(str(Path(path).resolve()))
    return tuple(f.rstrip(os.sep) + os.sep for f in folders)


_GENERATED = ("torchinductor_", f"{os.sep}.triton{os.sep}")


def user_frame(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame of ``exc``'s traceback that runs the
    user's own code (a ``--model`` module, a trusted pickle's callable), or None."""
    import traceback
    from pathlib import Path

    libraries = _library_folders()
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        name = frame.filename
        if name.startswith("<") or any(g in name for g in _GENERATED):
            continue
        try:
            resolved = str(Path(name).resolve())
        except OSError:
            continue
        if not resolved.startswith(libraries):
            found = f"{name}:{frame.lineno} in {frame.name}"
    return found


def user_code_error(exc: BaseException, who: str | None) -> errors.UserCodeError:
    """The one-line error for a run that the user's code ended: ``SystemExit``, a
    ``KeyboardInterrupt`` it raised itself, or another ``BaseException``."""
    where = user_frame(exc)
    if isinstance(exc, SystemExit):
        action = f"called sys.exit({exc.code!r})"
    elif isinstance(exc, KeyboardInterrupt):
        action = "raised KeyboardInterrupt itself (no Ctrl-C arrived)"
    else:
        text = " ".join(str(exc).split())[:200]
        action = f"raised {type(exc).__name__}" + (f": {text}" if text else "")
    subject = who or "code run by mliscan"
    at = f" at {where}" if where else ""
    return errors.UserCodeError(
        f"{subject} {action}{at}; the run did not finish, so nothing was measured or checked"
    )


def report(exc: BaseException) -> int:
    """Print one line for ``exc`` on stderr and return the exit code."""
    for cls, label in TABLE:
        if isinstance(exc, cls):
            message = " ".join(str(exc).split())
            print(f"mliscan: {label}: {message}", file=sys.stderr)
            return EXIT_INPUT
    environment = environment_message(exc)
    if environment is not None:
        print(f"mliscan: {environment}", file=sys.stderr)
        return EXIT_INPUT
    first = " ".join(str(exc).split())[:300]
    where = user_frame(exc)
    if where is not None:  # raised while the user's own code ran (a --model forward)
        print(
            f"mliscan: your code: {type(exc).__name__}: {first} (raised at {where}); the run "
            "did not finish",
            file=sys.stderr,
        )
        return EXIT_INPUT
    print(
        f"mliscan: internal error: {type(exc).__name__}: {first} "
        f"(set {DEBUG_VAR}=1 for the traceback, and please report it)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL
