"""The one table that turns library errors into one-line messages and exit codes.

Exit codes: 0 ran (and every gate held), 1 a gated property failed, 2 usage or input error,
3 an internal error (a bug: please report it). Set MLISCAN_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import errno
import os
import sys

from mliscan import errors

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
INTERRUPTED_MESSAGE = (
    "mliscan: interrupted: finished outputs are complete and nothing partial was written "
    "(outputs are written atomically); rerun the same command to start again"
)


class InterruptState:
    """Set by a command that printed its own interruption message (with how to resume)."""

    reported = False


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


def environment_message(exc: BaseException) -> str | None:
    """One line for an error the environment caused (OS refusals, network, memory), or None."""
    if isinstance(exc, MemoryError):
        return (
            "out of memory: lower --data-limit, --batch-size or --alphas, or use a larger machine"
        )
    if isinstance(exc, OSError) and exc.errno in OS_FIXES:
        where = exc.filename if exc.filename is not None else "a file"
        return f"cannot use {where}: {OS_FIXES[exc.errno]}"
    if type(exc).__module__.startswith(("httpx", "requests", "urllib3")) or isinstance(
        exc, (ConnectionError, TimeoutError)
    ):
        return (
            "cannot reach the network (the Hugging Face Hub?); pass --offline to use the "
            f"cached copy ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        )
    return None


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
    print(
        f"mliscan: internal error: {type(exc).__name__}: {first} "
        f"(set {DEBUG_VAR}=1 for the traceback, and please report it)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL
