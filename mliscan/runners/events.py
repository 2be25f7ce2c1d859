"""What a runner tells its caller while it works: status lines and progress.

A runner never prints. The command line passes events that draw bars and lines on stderr
(``cli/events.py``); the Python API passes :data:`SILENT` (or the caller's own). Texts are
plain (no markup): a renderer escapes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Tick = Callable[..., None]
"""Called after each finished unit, with the name of the unit (shown as the current item)."""


class Events:
    """Silent by default; subclass and override what you want to hear."""

    def say(self, text: str) -> None:
        """A status line (counts, what was found, what is skipped)."""

    def warn(self, text: str) -> None:
        """Something the user should act on, the run goes on."""

    @contextmanager
    def progress(self, total: int, unit: str) -> Iterator[Tick]:
        """Progress over ``total`` units named ``unit`` (paths, points, runs)."""

        def tick(item: str | None = None) -> None:
            pass

        yield tick


SILENT = Events()


def resume_hint(exc: BaseException, text: str) -> None:
    """Attach to an interruption what is saved and where (``exc.resume_hint``), so the
    caller can say it; the interruption itself is re-raised by the runner."""
    exc.resume_hint = text  # type: ignore[attr-defined]
