"""Rich progress bars for long steps; ``graftkit --quiet`` silences them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


@contextlib.contextmanager
def progress_bar(disable: bool | None = None) -> Iterator[Progress]:
    """A rich ``Progress`` with description, bar, count, elapsed and ETA (and a ``{task.fields[info]}``)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=_quiet if disable is None else disable,
        transient=False,
    ) as progress:
        yield progress
