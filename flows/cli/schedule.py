"""`aeflow schedule ...`: scheduled, incremental jobs (denoising a folder, scoring time series) as Prefect
deployments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Column, Table

from flows.cli.anomaly import print_update_report
from flows.cli.common import _job_folders
from flows.cli.denoise import _check_task_runner, print_report
from flows.progress import err, out

app = typer.Typer(help="Scheduled, incremental jobs: denoising, time-series scoring (needs `aeflow server start` "
                       "and a worker).",
                  no_args_is_help=True)


@app.command("denoise")
def schedule_denoise(
    in_dir: Path = typer.Argument(..., help="Folder to watch (never modified)."),
    out_dir: Path = typer.Argument(..., help="Where denoised images go."),
    cron: str = typer.Option(..., "--cron", help='When, in cron syntax: "0 2 * * *" is every night at 02:00.'),
    timezone: str = typer.Option("UTC", "--timezone", help="Time zone of the cron times, e.g. Europe/Paris."),
    model: str = typer.Option("auto", "--model"),
    sigma: Optional[float] = typer.Option(None, "--sigma", min=0, max=255),
    noise: str = typer.Option("auto", "--noise", help="As in `denoise run`: camera (the default) or gaussian."),
    strength: float = typer.Option(1.0, "--strength", help="As in `denoise run`: a factor on the noise level read."),
    reference: Optional[Path] = typer.Option(None, "--reference"),
    batches: int = typer.Option(1, "--batches", min=1, help="Batches run concurrently per run (fan-out)."),
    task_runner: str = typer.Option("threads", "--task-runner", help="threads (this machine's cores) or dask (a Dask cluster; the `dask` extra on the workers)."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Dask scheduler (tcp://host:8786); default: a temporary local cluster per run."),
    name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default: from the folders)."),
):
    """Denoise whatever is new in IN_DIR into OUT_DIR on a schedule (same job as `denoise run`)."""
    _check_task_runner(task_runner, dask_address)
    _job_folders(in_dir, out_dir)
    from flows.schedule import schedule_denoise as create

    full = create(str(in_dir), str(out_dir), cron, timezone, model, sigma, str(reference) if reference else None,
                  batches, name, task_runner=task_runner, dask_address=dask_address, noise=noise, strength=strength)
    _say_scheduled(full, cron, timezone)


def _say_scheduled(full: str, cron: str, timezone: str) -> None:
    from flows.schedule import next_fire

    out.print(f"scheduled [bold]{full}[/] ({cron}, {timezone}; next {next_fire(cron, timezone):%Y-%m-%d %H:%M %Z}); "
              f"start a worker with `aeflow worker start` and run it now with `aeflow schedule run {full.split('/')[1]}`")


@app.command("series")
def schedule_series(
    csv_dir: Path = typer.Argument(..., help="Folder of CSV files (timestamp,value) that grow (never modified)."),
    out_dir: Path = typer.Argument(..., help="Where <series>/scores.csv, events.json and the plot go."),
    cron: str = typer.Option(..., "--cron", help='When, in cron syntax: "*/15 * * * *" is every quarter of an hour.'),
    timezone: str = typer.Option("UTC", "--timezone", help="Time zone of the cron times, e.g. Europe/Paris."),
    model: Optional[str] = typer.Option(None, "--model", help="A detector (folder, name or unique prefix) for every series; default: each series' own, by its name."),
    column: Optional[str] = typer.Option(None, "--column", help="The value column (default: the one the detector was trained on)."),
    name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default: from the folders)."),
):
    """Score, on a schedule, the points that arrived in each CSV of CSV_DIR since the last run.

    The scores are a full `anomaly series score`'s; their rows are appended to OUT_DIR/<series>/scores.csv."""
    if csv_dir.is_file():
        raise typer.BadParameter(f"{csv_dir}: a file; give the folder that holds the CSV files", param_hint="CSV_DIR")
    _job_folders(csv_dir, out_dir)
    from flows.schedule import schedule_series as create

    _say_scheduled(create(str(csv_dir), str(out_dir), cron, timezone, model, column, name), cron, timezone)


@app.command("list")
def schedule_list():
    """Deployments: their folders, schedules, next runs (or paused) and the last run's outcome."""
    from flows.schedule import list_schedules

    table = Table("name", Column("IN -> OUT", overflow="fold"), "schedule", "next runs", "last run")
    for r in list_schedules():
        table.add_row(r["name"], f"{r['in_dir']} -> {r['out_dir']}", ", ".join(r["schedules"]),
                      "paused" if r["paused"] else "\n".join(r["next"]), r["last"])
    out.print(table)


@app.command("pause")
def schedule_pause(name: str = typer.Argument(..., help="Deployment name (see `aeflow schedule list`).")):
    """Stop NAME's scheduled runs until `schedule resume` (`schedule run` still runs it by hand)."""
    from flows.schedule import pause

    out.print(f"paused {pause(name)}")


@app.command("resume")
def schedule_resume(name: str = typer.Argument(..., help="Deployment name (see `aeflow schedule list`).")):
    """Run NAME on its schedule again."""
    from flows.schedule import resume

    out.print(f"resumed {resume(name)}")


@app.command("delete")
def schedule_delete(name: str = typer.Argument(..., help="Deployment name (see `aeflow schedule list`).")):
    """Delete NAME and its scheduled runs (its output folder and past runs stay)."""
    from flows.schedule import delete

    out.print(f"deleted {delete(name)}")


@app.command("run")
def schedule_run(name: str = typer.Argument(..., help="Deployment name (see `aeflow schedule list`)."),
                 wait: bool = typer.Option(False, "--wait", help="Wait for the run to finish.")):
    """Run a scheduled job now. With --wait, the job's report follows (exit status 1 when files failed)."""
    from flows.schedule import run_now

    warn = lambda m: err.print(f"[yellow]{escape(m)}[/]", soft_wrap=True)  # noqa: E731
    r = run_now(name, timeout=None if wait else 0, on_queue=warn)
    out.print(f"flow run {r['name']} ({r['id']}): {r['state']}")
    report = Path(r["parameters"]["out_dir"]) / ".aeflow" / "report.json"
    if wait and r["state"] == "Completed" and report.is_file():
        report = json.loads(report.read_text())
        if report.get("run", r["id"]) != str(r["id"]):     # another run of the folder ended after this one
            out.print(f"(the folder's report is now that of a later run, {report['run']})", soft_wrap=True)
        (print_update_report if report.get("job") == "anomaly-series" else print_report)(report)
        if report["counts"]["failed"]:
            raise typer.Exit(1)
    elif wait and r["state"] != "Completed":
        raise typer.Exit(1)
