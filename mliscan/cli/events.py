"""The runners' events on a terminal: status lines and warnings on stderr, progress bars
(or timestamped lines when stderr is not a terminal), nothing when ``--quiet``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mliscan.cli import ui
from mliscan.runners.events import Events, Tick


class TerminalEvents(Events):
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def say(self, text: str) -> None:
        ui.err.print(ui.escape(text))

    def warn(self, text: str) -> None:
        ui.err.print(f"[yellow]warning:[/] {ui.escape(text)}")

    @contextmanager
    def progress(self, total: int, unit: str) -> Iterator[Tick]:
        with ui.count_progress(total, unit, self.quiet or total == 0) as tick:
            yield tick


def interrupted(exc: KeyboardInterrupt, what: str) -> int:
    """A runner's interruption said with what is saved (its ``resume_hint``) and how to
    resume; exit 130. A KeyboardInterrupt the user's code raised itself is re-raised, to be
    reported as that code's error."""
    from mliscan.cli.errors import InterruptState, real_interrupt

    if not real_interrupt():
        raise exc
    InterruptState.reported = True
    hint = getattr(exc, "resume_hint", None) or f"the finished {what} are saved"
    ui.err.print(f"mliscan: interrupted: {ui.escape(hint)}; rerun the same command to resume")
    return 130
