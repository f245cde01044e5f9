"""Progress reporting for long prep steps: a rich bar on the terminal, nothing in library/test use."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator


class Progress:
    """Silent by default; `RichProgress` draws bars. Steps call `phase` then `advance`."""

    def phase(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


class RichProgress(Progress):
    def __init__(self, bar):
        self._bar = bar
        self._task = None

    def phase(self, description: str, total: int) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=self._bar.tasks[self._task].total)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)


@contextmanager
def rich_progress() -> Iterator[Progress]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as bar:
        yield RichProgress(bar)
