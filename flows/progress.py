"""Progress bars for long work (rich, on stderr; silent when disabled or not a terminal-friendly run)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class Bar:
    """A bar with a free-text status field: `update(done, total, status)`; redraws at most 10 times a second."""

    def __init__(self, description: str, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, transient=False, disable=not enabled)
        self.task = self.progress.add_task(description, total=None, status="")
        self._last = 0.0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.refresh()
        return self.progress.__exit__(*exc)

    def set(self, done: int, total: int | None, status: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last > 0.1:
            self._last = now
            self.progress.update(self.task, completed=done, total=total or None, status=status)


class TrainProgress(Bar):
    def update(self, step: int, total: int, metrics: dict) -> None:
        status = f"loss {metrics['loss']:.2e}"
        if "val_psnr" in metrics:
            status += f"  val PSNR {metrics['val_psnr']:.2f} dB"
        self.set(step, total, status, force=step == total)
