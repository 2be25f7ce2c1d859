"""Typed errors. Each also subclasses the matching builtin, so callers can catch either.

Every message is one line that names the file/key at fault and the fix. The CLI maps
these classes to exit codes in one table (``mliscan.cli.errors``).
"""

from __future__ import annotations


class MliscanError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class CheckpointNotFoundError(MliscanError, FileNotFoundError):
    """A checkpoint path does not exist or holds no recognised weights file."""


class CheckpointFormatError(MliscanError, ValueError):
    """A checkpoint file is corrupt, truncated or not a state dict."""


class UnsafeCheckpointError(MliscanError, ValueError):
    """A torch pickle needs arbitrary globals; it is refused, never unpickled."""


class CheckpointMismatchError(MliscanError, ValueError):
    """Two checkpoints, or a checkpoint and an architecture, do not pair up."""


class NonFiniteWeightsError(MliscanError, ValueError):
    """A checkpoint holds NaN or infinite values."""


class UnknownAdapterError(MliscanError, LookupError):
    """No adapter is registered under the requested name."""


class AdapterOptionError(MliscanError, ValueError):
    """An architecture option is unknown or has a bad value."""


class DataNotFoundError(MliscanError, FileNotFoundError):
    """Dataset files are missing from --data-dir."""


class DataError(MliscanError, ValueError):
    """A dataset is unknown, malformed or does not fit the architecture."""


class HubError(MliscanError, LookupError):
    """A Hub repository, revision or cache entry cannot be resolved."""


class UsageError(MliscanError, ValueError):
    """Options that contradict each other or are out of range."""


class OutputExistsError(UsageError):
    """An output folder holds a finished result of other settings; it is never replaced
    unless asked (``mliscan train --overwrite``)."""


class UserCodeError(UsageError):
    """The user's own code (a ``--model`` module, its factory or forward, a trusted pickle)
    ended the run: it called ``sys.exit``, raised ``KeyboardInterrupt`` itself, or raised."""


# Deprecation warnings that third-party libraries trigger inside mliscan's work (torch's
# FutureWarning for torch.jit.script in timm, torchvision and transformers): not the user's
# business. The command line ignores them; the Python API only inside its own calls.
LIBRARY_NOISE = r".*torch\.jit\.(script|interface|script_method).*deprecated"


def short_list(items: list[str] | tuple[str, ...], limit: int = 6) -> str:
    """Join sorted items for a one-line message, eliding the tail."""
    items = sorted(items)
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown
