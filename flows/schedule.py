"""Scheduled jobs on Prefect's own machinery: a process work pool, deployments with cron schedules, and workers
that execute their runs (`aeflow schedule ...`, `aeflow worker start`). Two jobs: denoising what is new in a folder
(`flows.pipelines.scheduled_denoise_flow`) and scoring what arrived in time series (`scheduled_series_flow`).

Schedules need a long-running server (`aeflow server start`): the temporary API of embedded mode runs
no scheduler. A deployment runs its flow from this checkout (its pull step sets the working directory
here), so workers on other hosts need the same checkout at the same path, the same outputs/ storage and
PREFECT_API_URL pointing at the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, DeploymentFilterName
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron

from flows.settings import running_server_url

REPO = Path(__file__).resolve().parents[1]
POOL = "aeflow"


def require_server() -> None:
    if not os.environ.get("PREFECT_API_URL") and running_server_url() is None:
        raise ConnectionError("schedules need a running Prefect server: start one with `aeflow server start` "
                           "(or point PREFECT_API_URL at yours)")


def next_fire(cron: str, tz: str = "UTC") -> datetime:
    """When `cron` (the five standard fields, or @daily and the like) next fires in time zone `tz`; a clear
    ValueError for anything else. Prefect's croniter also takes a sixth field (seconds, at the end, where
    Quartz puts them first) and dates that never come ("0 0 30 2 *"): both are refused here."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect._vendor.croniter import CroniterBadDateError, croniter

    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--timezone {tz!r}: not a time zone; e.g. UTC, Europe/Paris, America/New_York") from None
    fields = cron.split()
    if not (len(fields) == 5 or (len(fields) == 1 and cron.strip().startswith("@"))) or not croniter.is_valid(cron):
        raise ValueError(f"--cron {cron!r}: not a cron schedule; give 5 fields, minute hour day month weekday "
                         '(e.g. "0 2 * * *", every night at 02:00; "30 6 * * mon-fri"), or @daily, @hourly, @weekly')
    try:
        return croniter(cron, datetime.now(zone)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"--cron {cron!r}: never fires (no such date)") from None


def _fires(cron: str, tz: str, n: int) -> list[datetime]:
    from zoneinfo import ZoneInfo

    from prefect._vendor.croniter import croniter

    it = croniter(cron, datetime.now(ZoneInfo(tz)))
    return [it.get_next(datetime) for _ in range(n)]


def ensure_pool(name: str = POOL) -> None:
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))


def default_name(in_dir: str, out_dir: str) -> str:
    """A readable, stable deployment name for one input/output pair."""
    src, dst = Path(in_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    return f"{dst.name}-{hashlib.sha256(f'{src}|{dst}'.encode()).hexdigest()[:8]}"


def schedule_denoise(in_dir: str, out_dir: str, cron: str, tz: str = "UTC", model: str = "auto",
                     sigma: float | None = None, reference: str | None = None, batches: int = 1,
                     name: str | None = None, pool: str = POOL, task_runner: str = "threads",
                     dask_address: str | None = None, noise: str = "auto", strength: float = 1.0) -> str:
    """Create or update the deployment that denoises IN_DIR into OUT_DIR on `cron` (in time zone `tz`).
    Returns its full name, `denoise-run/NAME`."""
    from flows.denoise import check_job

    next_fire(cron, tz)
    require_server()
    src, dst = Path(in_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    check_job(src, dst, model, sigma, reference, noise, strength)   # refused now, not at 02:00 with three retries a minute apart
    params = {"in_dir": str(src), "out_dir": str(dst), "model": model, "sigma": sigma, "batches": batches,
              "reference": str(Path(reference).expanduser().resolve()) if reference else None,
              "retry_pending": True, "wait": 600.0, "progress": False,
              "task_runner": task_runner, "dask_address": dask_address, "noise": noise, "strength": strength}
    return _deploy("scheduled_denoise_flow", name or default_name(in_dir, out_dir), pool, cron, tz, params,
                   f"denoise {src} -> {dst} ({cron}, {tz})")


def schedule_series(in_dir: str, out_dir: str, cron: str, tz: str = "UTC", model: str | None = None,
                    column: str | None = None, name: str | None = None, pool: str = POOL) -> str:
    """Create or update the deployment that scores, on `cron`, the points that arrived in each CSV of IN_DIR since
    its last run into OUT_DIR (flows.anomaly.score_new). Returns its full name, `anomaly-series-update/NAME`."""
    from flows.anomaly import resolve_detector
    from models.checkpoints import check_folders

    next_fire(cron, tz)
    src, dst = Path(in_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder; give the folder that holds the CSV files")
    check_folders(src, dst)
    if model:
        resolve_detector(model)            # refused now, not at the first run (each series' own: when it comes)
    require_server()
    params = {"in_dir": str(src), "out_dir": str(dst), "model": model, "column": column, "wait": 600.0}
    return _deploy("scheduled_series_flow", name or default_name(in_dir, out_dir), pool, cron, tz, params,
                   f"score new points of the series in {src} -> {dst} ({cron}, {tz})")


def _deploy(entry: str, name: str, pool: str, cron: str, tz: str, params: dict, description: str) -> str:
    """Create or update deployment NAME of flows/pipelines.py's flow `entry` in work pool `pool`, on `cron` in
    time zone `tz`; returns its full name, FLOW/NAME."""
    import flows.pipelines

    ensure_pool(pool)
    flow = getattr(flows.pipelines, entry).from_source(str(REPO), f"flows/pipelines.py:{entry}")
    flow.deploy(name=name, work_pool_name=pool, schedules=[Cron(cron, timezone=tz)], parameters=params,
                build=False, push=False, print_next_steps=False, ignore_warnings=True, description=description)
    return f"{flow.name}/{name}"


def _outcome(run, params: dict, zone) -> str:
    """"Completed, 2 files failed (2026-03-01 02:00 CET)": the run's state, and for a completed run what its
    report.json in OUT_DIR says went wrong (a run whose files failed still completes)."""
    state = run.state.name
    if run.state.is_completed():
        try:
            counts = json.loads((Path(params["out_dir"]) / ".aeflow" / "report.json").read_text())["counts"]
            for key, what in (("failed", "failed"), ("pending", "still being written")):
                if counts.get(key):
                    state += f", {counts[key]} file{'s' if counts[key] != 1 else ''} {what}"
        except (OSError, ValueError, KeyError, TypeError):
            pass                                            # no report (yet): the state alone
    return f"{state} ({(run.end_time or run.expected_start_time).astimezone(zone):%Y-%m-%d %H:%M %Z})"


def list_schedules() -> list[dict]:
    """Each deployment with its folders, schedules, next scheduled runs (in the schedule's time zone) and the
    outcome of the last finished run."""
    from zoneinfo import ZoneInfo

    require_server()
    rows = []
    with get_client(sync_client=True) as client:
        for d in client.read_deployments():
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                                         sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
            now = datetime.now(timezone.utc)
            upcoming = sorted(r.expected_start_time for r in runs if r.state and r.state.is_scheduled()
                              and r.expected_start_time and r.expected_start_time > now)
            finished = [r for r in runs if r.state and r.state.is_final()]
            last = max(finished, key=lambda r: r.end_time or r.expected_start_time) if finished else None
            zones = [s.schedule.timezone for s in d.schedules if getattr(s.schedule, "timezone", None)]
            zone = ZoneInfo(zones[0]) if zones else timezone.utc             # next runs in the schedule's own zone
            params = d.parameters or {}
            if not upcoming and not d.paused:       # the scheduler service has not made them yet (it polls)
                upcoming = sorted(t for s in d.schedules if s.active and hasattr(s.schedule, "cron")
                                  for t in _fires(s.schedule.cron, s.schedule.timezone or "UTC", 3))
            rows.append({"name": d.name, "paused": d.paused,
                         "in_dir": params.get("in_dir", ""), "out_dir": params.get("out_dir", ""),
                         "schedules": [f"{s.schedule.cron} ({s.schedule.timezone})" for s in d.schedules
                                       if hasattr(s.schedule, "cron")],
                         "next": [] if d.paused else [f"{t.astimezone(zone):%Y-%m-%d %H:%M %Z}" for t in upcoming[:3]],
                         "last": _outcome(last, params, zone) if last else "", "parameters": params})
    return rows


def _deployment(client, name: str):
    """Deployment NAME (or FLOW/NAME), or a one-line error that lists the known ones."""
    if "/" in name:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            found = []
    else:
        found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
    if len(found) == 1:
        return found[0]
    if found:                               # one name under two jobs: FLOW/NAME says which
        raise ValueError(f"{len(found)} scheduled jobs are named {name!r}: give one of "
                         + ", ".join(f"{client.read_flow(d.flow_id).name}/{d.name}" for d in found))
    known = ", ".join(d.name for d in client.read_deployments()) or \
        "none yet (`aeflow schedule denoise` or `aeflow schedule series`)"
    raise FileNotFoundError(f"no scheduled job named {name!r}; known: {known}")


def _on_deployment(name: str, action: str) -> str:
    """Call the client's `<action>_deployment` (pause, resume, delete) on NAME; returns its name."""
    require_server()
    with get_client(sync_client=True) as client:
        d = _deployment(client, name)
        getattr(client, f"{action}_deployment")(d.id)
    return d.name


def pause(name: str) -> str:
    """Pause NAME's schedule: Prefect deletes its scheduled runs and makes no new ones until `resume`
    (`schedule run` still runs it by hand)."""
    return _on_deployment(name, "pause")


def resume(name: str) -> str:
    return _on_deployment(name, "resume")


def delete(name: str) -> str:
    """Delete NAME and its scheduled runs; its output folder and finished runs' history stay."""
    return _on_deployment(name, "delete")


def run_now(name: str, timeout: float | None = 0, on_queue=None) -> dict:
    """Start a run of deployment NAME now (returns at once when `timeout` is 0, else waits that long; None: until
    it ends). `on_queue(message)` hears, before any wait, that no worker has polled the deployment's pool in the
    last minute (the run then waits for one). Returns the run and the deployment's parameters."""
    require_server()
    with get_client(sync_client=True) as client:
        deployment = _deployment(client, name)
        pool = deployment.work_pool_name or POOL
        now = datetime.now(timezone.utc)
        try:
            workers = client.read_workers_for_work_pool(pool)
        except ObjectNotFound:
            workers = []
        alive = [w for w in workers if w.last_heartbeat_time and (now - w.last_heartbeat_time).total_seconds() < 60]
    if not alive and on_queue:
        on_queue(f"no worker has polled pool {pool!r} in the last minute: the run waits for one "
                 "(start it with `aeflow worker start`)")
    run = run_deployment(deployment.id, timeout=timeout, as_subflow=False)
    return {"id": str(run.id), "name": run.name, "state": run.state.name if run.state else None,
            "parameters": deployment.parameters}


def worker_command(pool: str = POOL, name: str | None = None, limit: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    return cmd + (["--name", name] if name else []) + (["--limit", str(limit)] if limit else [])


def start_worker(pool: str = POOL, name: str | None = None, limit: int | None = None) -> None:
    """Become a process worker until interrupted (several may run, on several hosts). This process is
    replaced (exec), so Ctrl-C and SIGTERM reach the worker itself and no orphan outlives its parent.
    `limit`: runs at a time (default: no limit, so the first worker to poll takes every waiting run)."""
    require_server()
    ensure_pool(pool)
    cmd = worker_command(pool, name, limit)
    os.chdir(REPO)
    # commands keep Prefect's console to warnings (they print their own summary); a worker's output is its log:
    # what it picks up, and each run's start and end line with counts (flows.pipelines.denoise_run_flow)
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"
    os.execv(cmd[0], cmd)
