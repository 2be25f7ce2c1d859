"""The one table that turns library errors into one-line messages and exit codes.

Exit codes: 0 ran (and every gate held), 1 a gated property failed, 2 usage or input error,
3 an internal error (a bug: please report it). Set MLISCAN_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

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


def report(exc: BaseException) -> int:
    """Print one line for ``exc`` on stderr and return the exit code."""
    for cls, label in TABLE:
        if isinstance(exc, cls):
            message = " ".join(str(exc).split())
            print(f"mliscan: {label}: {message}", file=sys.stderr)
            return EXIT_INPUT
    first = " ".join(str(exc).split())[:300]
    print(
        f"mliscan: internal error: {type(exc).__name__}: {first} "
        f"(set {DEBUG_VAR}=1 for the traceback, and please report it)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL
