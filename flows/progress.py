"""The consoles every command writes through, and progress bars for long work (rich, on stderr)."""

from __future__ import annotations

import time

import rich.console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

UNCUT = 100_000      # columns of a file or pipe: longer than any line a report, table or error holds


class Console(rich.console.Console):
    """A rich console that never cuts a line it writes to a file or a pipe. rich lays out to the terminal's
    width, else to $COLUMNS, else to 80 columns: a path in a one-line error was split mid-name and table columns
    were cut ("clip…") in `cmd > log` and `cmd | grep`. To a terminal it fits the window as before; to anything
    else a line is as long as what it holds, $COLUMNS or not. (Not `is_terminal`: FORCE_COLOR makes a pipe a
    "terminal".) An explicit `width=` is kept."""

    def __init__(self, *args, width: int | None = None, **kwargs):
        super().__init__(*args, width=width, **kwargs)
        self._asked_width = width                     # rich copies $COLUMNS into _width: not a request

    @property
    def size(self) -> rich.console.ConsoleDimensions:
        dims = super().size
        isatty = getattr(self.file, "isatty", None)
        try:
            tty = bool(isatty and isatty())
        except ValueError:                            # a closed file
            tty = False
        return dims if self._asked_width is not None or tty else rich.console.ConsoleDimensions(UNCUT, dims.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size
        self._asked_width = self._width


out = Console()                              # results: tables and reports
err = Console(stderr=True)                   # errors, warnings, progress bars


class Bar:
    """A bar with a free-text status field: `update(done, total, status)`; redraws at most 10 times a second."""

    remaining: type[ProgressColumn] = TimeRemainingColumn

    def __init__(self, description: str, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), self.remaining(),
                                 console=err, transient=False, disable=not enabled)
        self.task = self.progress.add_task(description, total=None, status="", seconds_left=None)
        self._last = 0.0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.refresh()
        return self.progress.__exit__(*exc)

    def set(self, done: int, total: int | None, status: str = "", force: bool = False, **fields) -> None:
        now = time.monotonic()
        if force or now - self._last > 0.1:
            self._last = now
            self.progress.update(self.task, completed=done, total=total or None, status=status, **fields)

    def warn(self, message: str) -> None:
        """One line above the bar (shown even when the bar is not)."""
        self.progress.console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


class BudgetRemainingColumn(TimeRemainingColumn):
    """Time left: from a time budget when the task has one (`seconds_left`), else rich's estimate from the pace."""

    def render(self, task) -> Text:
        left = task.fields.get("seconds_left")
        if left is None:
            return super().render(task)
        minutes, seconds = divmod(int(left + 0.5), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


class TrainProgress(Bar):
    """Steps done / total (a time budget's total is an estimate until half-way), loss, validation, time left."""

    remaining = BudgetRemainingColumn

    def update(self, step: int, total: int, metrics: dict) -> None:
        status = f"loss {metrics['loss']:.2e}"
        if "val_psnr" in metrics:
            status += f"  val PSNR {metrics['val_psnr']:.2f} dB"
        self.set(step, total, status, force=step == total, seconds_left=metrics.get("seconds_left"))
