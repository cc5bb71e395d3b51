"""Rich progress bars for long steps; ``graftkit --quiet`` silences them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

_quiet = False


class InfoColumn(ProgressColumn):
    """The task's ``info`` field (e.g. the running loss), empty when a task has none."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")))


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


@contextlib.contextmanager
def progress_bar(disable: bool | None = None) -> Iterator[Progress]:
    """A rich ``Progress`` with description, bar, count, elapsed and ETA and the task's ``info`` field."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        InfoColumn(),
        disable=_quiet if disable is None else disable,
        transient=False,
    ) as progress:
        yield progress
