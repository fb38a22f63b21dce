"""Progress bars for long work (rich, on stderr; silent when disabled or not a terminal-friendly run)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)


class Bar:
    """A bar with a free-text status field: `update(done, total, status)`; redraws at most 10 times a second."""

    remaining: type[ProgressColumn] = TimeRemainingColumn

    def __init__(self, description: str, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), self.remaining(),
                                 console=console, transient=False, disable=not enabled)
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
