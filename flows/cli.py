"""The `aeflow` command line. Heavy imports (torch, Prefect) happen inside commands so `--help` is instant."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="aeflow: autoencoder pipelines as cached Prefect flows. Start with `aeflow demo`.",
                  no_args_is_help=True, add_completion=False)
denoise_app = typer.Typer(help="Train image denoisers and denoise whole folders.", no_args_is_help=True)
server_app = typer.Typer(help="A local Prefect server (API + UI) that every aeflow command then uses.",
                         no_args_is_help=True)
app.add_typer(denoise_app, name="denoise")
app.add_typer(server_app, name="server")
out = Console()


def main() -> None:
    app()


def _run_flow(flow_fn, **kwargs):
    """One flow run per command; Prefect's per-run heartbeat thread costs ~1 s at exit and is not needed
    for a flow that lives as long as this process."""
    import os

    from prefect.settings import temporary_settings

    if not os.environ.get("PREFECT_API_URL"):
        Console(stderr=True).print("[dim]Prefect: starting a temporary local API (10-30 s; "
                                   "`aeflow server start` keeps one running for every command)[/]")
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        return flow_fn(**kwargs)


def _parse_sigma(text: str) -> float | list[float]:
    try:
        if "-" in text.strip("-") or ":" in text:
            lo, hi = text.replace(":", "-").split("-")
            return [float(lo), float(hi)]
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give a number (25) or a range for a blind model (0-55)") from None


def _ints(text: str | None) -> list[int] | None:
    return [int(v) for v in text.split(",")] if text else None


@denoise_app.command("train")
def denoise_train(
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of clean images (recursive). Default: scikit-image's bundled photos."),
    model: str = typer.Option("skip_dae", "--model", help="Model kind: skip_dae (U-Net style, strong) or conv_ae (textbook bottleneck baseline)."),
    sigma: str = typer.Option("0-55", "--sigma", help="Noise level on the 0-255 scale: a number (25) for a sigma-specific model, or lo-hi (0-55) for a blind one."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-clock training budget (default 10 when no --steps/--epochs)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps instead of a time budget."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs of --epoch-steps steps instead of a time budget."),
    epoch_steps: int = typer.Option(200, "--epoch-steps", help="Steps between validations/checkpoints."),
    batch_size: int = typer.Option(32, "--batch-size"),
    patch: int = typer.Option(64, "--patch", help="Training crop size in pixels."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, warm-up then cosine decay)."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Features per level, e.g. 32,64,128."),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="skip_dae residual blocks per level, e.g. 1,1,2."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (gray) or 3 (colour); default: 3 if any training image has colour."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA with bf16 when present, else all CPU cores), cpu or cuda."),
    init: Optional[str] = typer.Option(None, "--init", help="Fine-tune: start from this model (shipped name or folder); its architecture is kept."),
    refresh: bool = typer.Option(False, "--refresh", help="Rebuild cached stages instead of reusing them."),
):
    """Train a denoising autoencoder (cached: an unchanged second run trains nothing; a killed run resumes)."""
    from flows.catalog import resolve_model
    from flows.pipelines import denoise_train_flow
    from models.registry import DENOISERS

    if model not in DENOISERS:
        raise typer.BadParameter(f"{model!r}: image denoisers are {', '.join(DENOISERS)}", param_hint="--model")
    init_dir = None
    if init:
        try:
            init_dir = resolve_model(init, channels=channels or 1)
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e), param_hint="--init") from None
        base = json.loads((init_dir / "config.json").read_text())["model"]
        model_cfg = {**base, "sigma": _parse_sigma(sigma)}
    else:
        model_cfg = {"kind": model, "sigma": _parse_sigma(sigma)}
    for k, v in (("widths", _ints(widths)), ("blocks", _ints(blocks)), ("channels", channels)):
        if v is not None:
            model_cfg[k] = v
    if minutes is None and steps is None and epochs is None:
        minutes = 10.0
    training = {k: v for k, v in dict(minutes=minutes, steps=steps, epochs=epochs, epoch_steps=epoch_steps,
                                      batch_size=batch_size, patch=patch, lr=lr, seed=seed, device=device).items()
                if v is not None}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    folder = _run_flow(denoise_train_flow, data=str(data) if data else None, model=model_cfg, training=training,
                       refresh=refresh, init=str(init_dir) if init_dir else None)
    from flows.catalog import describe

    d = describe(Path(folder))
    cfg = json.loads((Path(folder) / "config.json").read_text())
    created = json.loads((Path(folder) / "manifest.json").read_text())["created"]
    cached = f" [dim](cached: trained {created}; nothing to do, --refresh to retrain)[/]" if created < started else ""
    out.print(f"[bold]model[/] {folder}{cached}")
    out.print(f"  {d['kind']}, {d['channels']} channel(s), sigma {d['sigma']}, {d['parameters']:,} parameters, "
              f"{cfg['steps']} steps in {cfg['seconds']:.0f} s ({cfg['patches_per_s']:.0f} patches/s, {cfg['device']})")
    out.print(f"  validation PSNR {cfg['metrics']['val_psnr']:.2f} dB; curve: {Path(folder) / 'curve.png'}")


@denoise_app.command("run")
def denoise_run(
    in_dir: Path = typer.Argument(..., help="Folder of images to denoise (recursive; never modified)."),
    out_dir: Path = typer.Argument(..., help="Where the denoised tree goes (must not be inside IN_DIR)."),
    model: str = typer.Option("auto", "--model", help="auto (shipped models), a shipped or trained model name, or a model folder."),
    sigma: Optional[float] = typer.Option(None, "--sigma", help="Noise level of the inputs if known (0-255): picks a sigma-specific model when one exists."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Folder of clean originals (same relative paths) to score PSNR/SSIM."),
    device: str = typer.Option("auto", "--device"),
    ensemble: bool = typer.Option(False, "--ensemble", help="Average over the 8 flips/rotations: 8x slower, about 0.1 dB better."),
    batches: int = typer.Option(1, "--batches", help="Split the work into N batches run concurrently (fan-out)."),
    task_runner: str = typer.Option("threads", "--task-runner", help="threads: the batches share this machine's cores; dask: they run on a Dask cluster (the `dask` extra)."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Scheduler of the Dask cluster (tcp://host:8786); default: a temporary local cluster."),
):
    """Denoise every image in a folder (incremental: unchanged images already done are skipped)."""
    from flows.pipelines import denoise_run_flow

    _check_task_runner(task_runner, dask_address)
    report = _run_flow(denoise_run_flow, in_dir=str(in_dir), out_dir=str(out_dir), model=model, sigma=sigma,
                       reference=str(reference) if reference else None, device=device, ensemble=ensemble,
                       batches=batches, task_runner=task_runner, dask_address=dask_address)
    print_report(report)


def _check_task_runner(task_runner: str, dask_address: str | None) -> None:
    if task_runner not in ("threads", "dask"):
        raise typer.BadParameter(f"{task_runner!r}: use threads or dask", param_hint="--task-runner")
    if dask_address and task_runner != "dask":
        raise typer.BadParameter("--dask-address needs --task-runner dask", param_hint="--dask-address")
    if task_runner == "dask":
        import importlib.util

        if importlib.util.find_spec("prefect_dask") is None:
            raise typer.BadParameter("needs prefect-dask: pip install -e '.[dask]'", param_hint="--task-runner")


def _db(v: float | None) -> str:
    return "identical" if v is None else f"{v:.2f} dB"


def print_report(report: dict) -> None:
    c = report["counts"]
    out.print(f"[bold]{c['processed']} processed[/], {c['skipped']} skipped, "
              f"[{'red' if c['failed'] else 'green'}]{c['failed']} failed[/] of {c['images']} images "
              f"in {report['seconds']:.1f} s ({report['images_per_s']:.2f} images/s)")
    for f in report["failed"][:10]:
        out.print(f"  [red]failed[/] {f['file']}: {f['reason']}")
    if len(report["failed"]) > 10:
        out.print(f"  ... and {len(report['failed']) - 10} more (see report.json)")
    if "mean" in report:
        m = report["mean"]
        out.print(f"  mean PSNR {_db(m['input_psnr'])} (input) -> {_db(m['psnr'])} (denoised), SSIM {m['ssim']:.3f}")
    out.print(f"  report: {Path(report['out_dir']) / '.aeflow' / 'report.json'}")
    if report.get("contact_sheet"):
        out.print(f"  contact sheet: {report['contact_sheet']}")


@app.command("models")
def list_models():
    """List shipped and trained models with their metrics."""
    from flows.catalog import describe, shipped_models, trained_models

    table = Table("source", "kind", "ch", "sigma", "params", "val PSNR", "steps", title="models (--model NAME)")
    table.add_column("name", no_wrap=True)
    table.columns.insert(0, table.columns.pop())
    for folder in shipped_models() + trained_models():
        d = describe(folder)
        table.add_row(d["name"], d["source"], d["kind"], str(d["channels"]), d["sigma"],
                      f"{d['parameters']:,}" if d["parameters"] else "", f"{d['val_psnr']:.2f}" if d["val_psnr"] else "",
                      str(d["steps"] or ""))
    out.print(table)


@app.command("demo")
def demo(sigma: float = typer.Option(25.0, "--sigma", help="Noise added to the demo photos (0-255 scale).")):
    """Add noise to a few of scikit-image's photos, denoise them with the shipped models, show the gain."""
    from flows.pipelines import demo_flow

    report = _run_flow(demo_flow, sigma=sigma)
    table = Table("image", "noisy PSNR", "denoised PSNR", "SSIM", "model")
    for r in report["images"]:
        if "psnr" in r:
            table.add_row(r["file"], _db(r["input_psnr"]), _db(r["psnr"]), f"{r['ssim']:.3f}", r.get("model", ""))
    out.print(table)
    print_report(report)
    out.print("[dim]The gray photos are new to the gray model (trained on Train400). astronaut, coffee and chelsea "
              "were in the colour model's training set (optimistic figures); grace_hopper (from matplotlib) was not.[/]")


@server_app.command("start")
def server_start(host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback needs --auth."),
                 port: int = typer.Option(4200, "--port"),
                 auth: Optional[str] = typer.Option(None, "--auth", help="user:password required on every API call but health.")):
    """Start a Prefect server in the background (SQLite under outputs/); later commands use it."""
    from flows.server import start

    info = start(host, port, auth)
    out.print(f"Prefect server running (pid {info['pid']}): UI {info['ui_url']}  API {info['api_url']}")


@server_app.command("stop")
def server_stop():
    """Stop the server started by `aeflow server start`."""
    from flows.server import stop

    out.print("stopped" if stop() else "no aeflow server was running")


schedule_app = typer.Typer(help="Scheduled, incremental denoising jobs (needs `aeflow server start` and a worker).",
                           no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")
worker_app = typer.Typer(help="Workers that execute scheduled runs.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")


@schedule_app.command("denoise")
def schedule_denoise(
    in_dir: Path = typer.Argument(..., help="Folder to watch (never modified)."),
    out_dir: Path = typer.Argument(..., help="Where denoised images go."),
    cron: str = typer.Option(..., "--cron", help='When, in cron syntax: "0 2 * * *" is every night at 02:00.'),
    timezone: str = typer.Option("UTC", "--timezone", help="Time zone of the cron times, e.g. Europe/Paris."),
    model: str = typer.Option("auto", "--model"),
    sigma: Optional[float] = typer.Option(None, "--sigma"),
    reference: Optional[Path] = typer.Option(None, "--reference"),
    batches: int = typer.Option(1, "--batches", help="Batches run concurrently per run (fan-out)."),
    task_runner: str = typer.Option("threads", "--task-runner", help="threads (this machine's cores) or dask (a Dask cluster; the `dask` extra on the workers)."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Dask scheduler (tcp://host:8786); default: a temporary local cluster per run."),
    name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default: from the folders)."),
):
    """Denoise whatever is new in IN_DIR into OUT_DIR on a schedule (same job as `denoise run`)."""
    from flows.schedule import schedule_denoise as create

    _check_task_runner(task_runner, dask_address)
    full = create(str(in_dir), str(out_dir), cron, timezone, model, sigma, str(reference) if reference else None,
                  batches, name, task_runner=task_runner, dask_address=dask_address)
    out.print(f"scheduled [bold]{full}[/] ({cron}, {timezone}); start a worker with `aeflow worker start` "
              f"and run it now with `aeflow schedule run {full.split('/')[1]}`")


@schedule_app.command("list")
def schedule_list():
    """Deployments, their schedules, next runs and last result."""
    from flows.schedule import list_schedules

    table = Table("name", "schedule", "next runs", "last run", "paused")
    for r in list_schedules():
        table.add_row(r["name"], ", ".join(r["schedules"]), "\n".join(r["next"]), r["last"], str(r["paused"]))
    out.print(table)


@schedule_app.command("run")
def schedule_run(name: str = typer.Argument(..., help="Deployment name (see `aeflow schedule list`)."),
                 wait: bool = typer.Option(False, "--wait", help="Wait for the run to finish.")):
    """Run a scheduled job now."""
    from flows.schedule import run_now

    r = run_now(name, timeout=None if wait else 0)
    out.print(f"flow run {r['name']} ({r['id']}): {r['state']}")


@worker_app.command("start")
def worker_start(pool: str = typer.Option("aeflow", "--pool"), name: Optional[str] = typer.Option(None, "--name")):
    """Run a process worker in the foreground (Ctrl-C stops it); several may run, on several hosts."""
    from flows.schedule import start_worker

    raise typer.Exit(start_worker(pool, name))


if __name__ == "__main__":
    main()
