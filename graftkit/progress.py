"""Progress for long steps: rich bars on a terminal, plain lines in a file or pipe.

``graftkit --quiet`` silences both (and the commands' chatter), not the results a command
prints. Rich redraws a bar in place, which a log file only sees when a step ends; redirected
output instead gets one line per step when it ends, and one every :data:`LINE_EVERY` seconds
while it runs, each with elapsed time and ETA. Libraries' own bars (transformers' "Loading
weights") are drawn only on a terminal (:func:`library_bars`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

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
#: Seconds between two progress lines of a running step when output is not a terminal.
LINE_EVERY = 30.0


class InfoColumn(ProgressColumn):
    """The task's ``info`` field (e.g. the running loss), empty when a task has none."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")))


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def library_bars() -> bool:
    """Whether a library may draw its own progress bars (tqdm, on stderr): not ``--quiet`` and
    stderr a terminal. Redirected to a file, a tqdm bar is carriage-return noise that the plain
    progress lines already cover."""
    return not _quiet and sys.stderr.isatty()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """The subset of rich's ``Progress`` graftkit uses, printed as plain lines (non-TTY output)."""

    def __init__(self, every: float = LINE_EVERY, stream: TextIO | None = None):
        self.every, self.stream = every, stream
        self.tasks: dict[int, dict[str, Any]] = {}
        self._next = 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task_id in list(self.tasks):
            self.remove_task(task_id)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        now = time.monotonic()
        task_id, self._next = self._next, self._next + 1
        self.tasks[task_id] = {
            "description": description,
            "total": total,
            "completed": 0.0,
            "info": fields.get("info", ""),
            "start": now,
            "last": now,
            "done": False,
        }
        return task_id

    def update(
        self,
        task_id: int,
        *,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            return
        if total is not None:
            task["total"] = total
        if description is not None:
            task["description"] = description
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        if "info" in fields:
            task["info"] = fields["info"]
        now = time.monotonic()
        finished = task["total"] is not None and task["completed"] >= task["total"]
        if finished and not task["done"]:
            task["done"] = True
            self._print(task, now)
        elif not finished and now - task["last"] >= self.every:
            task["last"] = now
            self._print(task, now)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        task = self.tasks.pop(task_id, None)
        if task is not None and not task["done"] and task["completed"]:
            self._print(task, time.monotonic())

    def _print(self, task: dict[str, Any], now: float) -> None:
        elapsed = now - task["start"]
        done, total = task["completed"], task["total"]
        count = f"{done:g}/{total:g}" if total is not None else f"{done:g}"
        eta = ""
        if total and done and done < total:
            eta = f" eta {_clock(elapsed / done * (total - done))}"
        info = f"  {task['info']}" if task["info"] else ""
        stream = self.stream or sys.stdout
        print(f"{task['description']}: {count} elapsed {_clock(elapsed)}{eta}{info}", file=stream)
        stream.flush()


@contextlib.contextmanager
def progress_bar(disable: bool | None = None) -> Iterator[Progress | LineProgress]:
    """A rich ``Progress`` (description, bar, count, elapsed, ETA, the task's ``info`` field) on a
    terminal; :class:`LineProgress` when stdout is a file or pipe."""
    disabled = _quiet if disable is None else disable
    if not disabled and not sys.stdout.isatty():
        with LineProgress() as lines:
            yield lines
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        InfoColumn(),
        disable=disabled,
        transient=False,
    ) as progress:
        yield progress
