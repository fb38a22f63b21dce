"""Helpers the command groups share: running a flow, checks made before any work, and report lines."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Column

from flows.progress import err, out


def _file_column() -> Column:
    """A narrow terminal folds file names onto more lines; it never cuts them to "clip…"."""
    return Column("file", overflow="fold", min_width=12)


def _console_filter(record) -> bool:
    """What Prefect's console handler leaves out in a command: the run's own failure reports (the command
    reports them itself: one line for a user's mistake, else the traceback; the server keeps Prefect's), and
    the event and log workers' exit-time "Still processing items: 3 items remaining...", which reads like a
    fault after every command. Other warnings (items dropped, retries) stay."""
    if record.name.startswith(("prefect.flow_runs", "prefect.task_runs")) and record.levelno >= 40:
        return False
    return not record.getMessage().startswith("Still processing items")


def _run_flow(flow_fn, **kwargs):
    """One flow run per command (flows.pipelines.run_flow: which Prefect API, heartbeat off)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.pipelines import run_flow

    for handler in logging.getLogger().handlers:           # set up when the flows were defined
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_console_filter)             # the same filter is added once
    return run_flow(flow_fn, kwargs, announce=lambda m: err.print(f"[dim]{m}[/]", highlight=False))


def nproc_option():
    return typer.Option(1, "--nproc", min=1, help="Train data-parallel in N processes on this host (torch's launcher; "
                        "gloo on CPUs, nccl on GPUs); the batch is split between them. Also runs under your own torchrun.")


def launch(nproc: int, batch_size: int | None = None) -> None:
    """--nproc N: run this same command as N processes under torch's launcher and exit with rank 0's status (rank
    0 does the command's work; the others join its trainings). Under a launcher already, nothing to do."""
    import os
    import sys

    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return
    if batch_size is not None and batch_size % nproc:
        raise typer.BadParameter(f"batch size {batch_size} does not split over {nproc} processes: give a multiple of "
                                 f"{nproc}", param_hint="--nproc")
    from models.distributed import launch as run_ranks

    sys.exit(run_ranks(nproc, [sys.executable, "-m", "flows.cli", *sys.argv[1:]]))


def _device(value: str) -> str:
    """auto, cpu, cuda or cuda:N, checked before any work: a missing GPU would otherwise fail every image."""
    import re

    if value in ("auto", "cpu"):
        return value
    if not re.fullmatch(r"cuda(:\d+)?", value):
        raise typer.BadParameter(f"{value!r}: auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise typer.BadParameter(f"{value}: no CUDA GPU is visible here; use auto or cpu")
    return value


def _job_folders(in_dir: Path, out_dir: Path) -> None:
    """The job's folder checks before torch (2 s) and Prefect (1-2 s) are imported: models.checkpoints loads
    neither, so a mistyped folder is answered in a fraction of a second."""
    from models.checkpoints import check_folders

    check_folders(in_dir.expanduser().resolve(), out_dir.expanduser().resolve())


def _out_folder(path: Path) -> None:
    """An output path that is a file, refused before any work (which would fail after the model ran)."""
    from models.checkpoints import check_output_folder

    check_output_folder(path)


def _ints(text: str | None, option: str = "--widths") -> list[int] | None:
    """"16,32,64" -> [16, 32, 64]; anything else is a clear error for `option`."""
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{text!r}: positive whole numbers separated by commas, e.g. 16,32,64",
                                 param_hint=option)
    return values


def _print_skipped(ingest: Path) -> None:
    """Files the ingest stage could not read: trained without, and said so (reasons in its manifest)."""
    from flows.stages import read_manifest

    if (manifest := read_manifest(ingest)) is None:       # a model trained from a cache since cleared (or broken)
        return
    failed = manifest.get("failed") or manifest.get("bad") or []      # music, images
    if failed:
        first = failed[0]
        out.print(f"  [yellow]{len(failed)} file(s) could not be read and were left out, e.g. {first['file']}: "
                  f"{first['reason']} (all in {ingest / 'manifest.json'})[/]")
    if dups := manifest.get("duplicates"):                               # images: same content, trained on once
        out.print(f"  {len(dups)} duplicate file(s) (same content as another) left out, e.g. {dups[0]['file']} "
                  f"= {dups[0]['same_as']} (all in {ingest / 'manifest.json'})")


def _print_removed(report: dict) -> None:
    if report.get("removed_earlier"):
        out.print(f"  [dim]replaced an earlier run here: removed its {len(report['removed_earlier'])} files that "
                  "this run did not write again[/]")
