"""The `aeflow` command line. Heavy imports (torch, Prefect) happen inside commands so `--help` is instant."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Column, Table

from flows.progress import err, out


def _readable_help() -> None:
    """typer 0.2x writes `--refresh <bool>` for a flag (which takes no value) and `{in_dir} {out_dir}` in the usage
    line; write `--refresh` and `IN_DIR OUT_DIR` (`[NAME]` when optional), as click and the README do. Error hints
    follow: "Missing argument 'IN_DIR'"."""
    from typer.core import TyperArgument, TyperOption

    if not hasattr(TyperOption, "display_type_rich"):     # an older typer: click's metavars read so already
        return
    typed = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag or self.count else typed(self, ctx)

    def get_usage_pieces(self, ctx):
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return [name if self.required else f"[{name}]"]

    TyperOption.display_type_rich = display_type_rich
    TyperArgument.display_name_raw = property(lambda self: self.metavar or self.name.upper())
    TyperArgument.get_usage_pieces = get_usage_pieces


_readable_help()
# a crash's traceback in rich's box is cut at 80 columns in a log file: plain Python there
app = typer.Typer(help="aeflow: autoencoder pipelines as cached Prefect flows. Start with `aeflow demo`.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=sys.stderr.isatty())
denoise_app = typer.Typer(help="Train image denoisers and denoise whole folders.", no_args_is_help=True)
server_app = typer.Typer(help="A local Prefect server (API + UI) that every aeflow command then uses.",
                         no_args_is_help=True)
app.add_typer(denoise_app, name="denoise")
app.add_typer(server_app, name="server")


def _file_column() -> Column:
    """A narrow terminal folds file names onto more lines; it never cuts them to "clip…"."""
    return Column("file", overflow="fold", min_width=12)


# a mistake in what the user asked for: one line and exit 2 (raised by the checks and by the flows)
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError, ConnectionError)


def main() -> None:
    """Errors about the user's input (a missing folder, an unknown model, a bad file) and argument mistakes
    print one line and exit 2; AEFLOW_DEBUG=1 shows the traceback instead."""
    import gc
    import os

    from flows import server

    server.START_EARLY = True          # a command that imports its flows starts the Prefect API meanwhile
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError      # typer 0.2x bundles click
    except ImportError:
        from click.exceptions import ClickException, NoArgsIsHelpError

    try:
        code = app(standalone_mode=False)        # click's errors come back here instead of as a box at 80 columns
    except NoArgsIsHelpError:                    # `aeflow denoise`: the help was printed
        code = 2
    except ClickException as e:                  # argument mistakes (usage 2), as click numbers them
        usage = e.ctx.get_usage() if getattr(e, "ctx", None) else ""        # "Usage: aeflow denoise run ..."
        error(f"{e.format_message().rstrip('.')}; u{usage[1:]}" if usage else e.format_message())
        code = e.exit_code
    except typer.Abort:
        error("aborted")
        code = 1
    except USER_ERRORS as e:
        if os.environ.get("AEFLOW_DEBUG"):
            raise
        error(str(e))
        code = 2
    except Exception as e:
        # a condition with its own exit status (flows.denoise: 3 folder locked; 4 disk full, wherever a write
        # ran out of room: outputs, checkpoints, model folders): one line too
        from models.checkpoints import storage_error

        status = getattr(e, "exit_status", None)
        if not isinstance(status, int) and storage_error(e) is not None:
            status = 4
        if not isinstance(status, int) or os.environ.get("AEFLOW_DEBUG"):
            raise
        error(str(e))
        code = status
    finally:
        # The interpreter's last garbage collection walks every object torch and Prefect created: 0.5-1 s
        # per command. Frozen objects are skipped; exit handlers (Prefect's log flush, temporary API) still run.
        gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)


def error(message: str) -> None:
    """One line on stderr, whatever it goes to: a terminal folds it on screen, a file or a pipe gets it whole
    (a path split over two lines cannot be copied, nor found by grep)."""
    one_line = re.sub(r"\s*\n\s*", " ", message.strip())
    err.print(f"[bold red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True)


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


def _parse_sigma(text: str) -> float | list[float]:
    try:
        if "-" in text.strip("-") or ":" in text:
            lo, hi = text.replace(":", "-").split("-")
            return [float(lo), float(hi)]
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give a number (25) or a range for a blind model (0-55)",
                                 param_hint="--sigma") from None


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


@denoise_app.command("train")
def denoise_train(
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of clean images (recursive). Default: scikit-image's bundled photos."),
    model: str = typer.Option("skip_dae", "--model", help="Model kind: skip_dae (U-Net style, strong) or conv_ae (textbook bottleneck baseline)."),
    sigma: str = typer.Option("0-55", "--sigma", help="Noise level on the 0-255 scale: a number (25) for a sigma-specific model, or lo-hi (0-55) for a blind one."),
    minutes: Optional[float] = typer.Option(None, "--minutes", min=0, help="Wall-clock training budget (default 10 when no --steps/--epochs)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps instead of a time budget."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs of --epoch-steps steps instead of a time budget."),
    epoch_steps: int = typer.Option(200, "--epoch-steps", min=1, help="Steps between validations/checkpoints."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    patch: int = typer.Option(64, "--patch", help="Training crop size in pixels."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, warm-up then cosine decay)."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Features per level, e.g. 32,64,128."),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="skip_dae residual blocks per level, e.g. 1,1,2."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (gray) or 3 (colour); default: 3 if any training image has colour."),
    noise: str = typer.Option("gaussian", "--noise", help="Training noise: gaussian (white, --sigma) or camera (a camera's pipeline: signal-dependent, demosaiced, JPEG; models/degrade.py)."),
    noise_map: bool = typer.Option(False, "--noise-map", help="skip_dae: take a noise level as a second input (FFDNet) so that --strength steers it; it estimates the level itself when none is given."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", callback=_device, help="auto (CUDA with bf16 when present, else all CPU cores), cpu or cuda."),
    init: Optional[str] = typer.Option(None, "--init", help="Fine-tune: start from this model (shipped name or folder); its architecture is kept."),
    refresh: bool = typer.Option(False, "--refresh", help="Rebuild cached stages instead of reusing them, and discard a killed run's checkpoints instead of resuming them."),
    name: Optional[str] = typer.Option(None, "--name", help="Name the model (folder outputs/train/NAME-<key>; `denoise run --model NAME`). A name in use for other settings or data is refused."),
):
    """Train a denoising autoencoder (cached: an unchanged second run trains nothing; a killed run resumes)."""
    from flows.catalog import PRETRAINED, resolve_model

    if name is not None and (not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", name) or (PRETRAINED / name).exists()):
        raise typer.BadParameter(f"{name!r}: a name is up to 40 lower-case letters, digits, '_' and '-', and not a "
                                 "shipped model's", param_hint="--name")
    init_dir = None
    if init:
        try:
            init_dir = resolve_model(init, channels=channels or 1, job="denoise")
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e), param_hint="--init") from None
        base = json.loads((init_dir / "config.json").read_text())["model"]
        model_cfg = {**base, "sigma": _parse_sigma(sigma)}
    else:
        model_cfg = {"kind": model, "sigma": _parse_sigma(sigma)}
    if noise not in ("gaussian", "camera"):
        raise typer.BadParameter(f"{noise!r}: gaussian or camera", param_hint="--noise")
    if (noise != "gaussian" or noise_map) and model != "skip_dae":
        raise typer.BadParameter("--noise camera and --noise-map are skip_dae options", param_hint="--model")
    for k, v in (("widths", _ints(widths)), ("blocks", _ints(blocks, "--blocks")), ("channels", channels),
                 ("noise", None if noise == "gaussian" else noise), ("noise_map", noise_map or None)):
        if v is not None:
            model_cfg[k] = v
    from models import DENOISERS

    if model not in DENOISERS:
        raise typer.BadParameter(f"{model!r}: image denoisers are {', '.join(DENOISERS)}", param_hint="--model")
    if minutes is None and steps is None and epochs is None:
        minutes = 10.0
    training = {k: v for k, v in dict(minutes=minutes, steps=steps, epochs=epochs, epoch_steps=epoch_steps,
                                      batch_size=batch_size, patch=patch, lr=lr, seed=seed, device=device).items()
                if v is not None}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    from flows.pipelines import denoise_train_flow

    folder = _run_flow(denoise_train_flow, data=str(data) if data else None, model=model_cfg, training=training,
                       refresh=refresh, init=str(init_dir) if init_dir else None, name=name)
    from flows.catalog import describe

    d = describe(Path(folder))
    cfg = json.loads((Path(folder) / "config.json").read_text())
    created = json.loads((Path(folder) / "manifest.json").read_text())["created"]
    cached = f" [dim](cached: trained {created}; nothing to do, --refresh to retrain)[/]" if created < started else ""
    out.print(f"[bold]model[/] {folder}{cached}")
    out.print(f"  {d['kind']}, {d['channels']} channel(s), sigma {d['sigma']}, {d['parameters']:,} parameters, "
              f"{cfg['steps']} steps in {cfg['seconds']:.0f} s ({cfg['patches_per_s']:.0f} patches/s, {cfg['device']})")
    out.print(f"  validation PSNR {cfg['metrics']['val_psnr']:.2f} dB; curve: {Path(folder) / 'curve.png'}")
    _print_skipped(Path(cfg["data"]["ingest"]))


def _print_skipped(ingest: Path) -> None:
    """Files the ingest stage could not read: trained without, and said so (reasons in its manifest)."""
    if not (ingest / "manifest.json").is_file():          # a model trained from a cache since cleared
        return
    manifest = json.loads((ingest / "manifest.json").read_text())
    failed = manifest.get("failed") or manifest.get("bad") or []      # music, images
    if failed:
        first = failed[0]
        out.print(f"  [yellow]{len(failed)} file(s) could not be read and were left out, e.g. {first['file']}: "
                  f"{first['reason']} (all in {ingest / 'manifest.json'})[/]")
    if dups := manifest.get("duplicates"):                               # images: same content, trained on once
        out.print(f"  {len(dups)} duplicate file(s) (same content as another) left out, e.g. {dups[0]['file']} "
                  f"= {dups[0]['same_as']} (all in {ingest / 'manifest.json'})")


@denoise_app.command("run")
def denoise_run(
    in_dir: Path = typer.Argument(..., help="Folder of images to denoise (recursive; never modified)."),
    out_dir: Path = typer.Argument(..., help="Where the denoised tree goes (must not be inside IN_DIR)."),
    model: str = typer.Option("auto", "--model", help="auto (shipped models), a shipped or trained model name, or a model folder."),
    sigma: Optional[float] = typer.Option(None, "--sigma", min=0, max=255, help="Noise level of the inputs if known (0-255, white Gaussian): picks a sigma-specific model when one exists, else tells the blind noise-map model the level."),
    noise: str = typer.Option("auto", "--noise", help="Which shipped model auto takes: camera (real photos and scans: the default) or gaussian (white noise, as in the benchmarks)."),
    strength: float = typer.Option(1.0, "--strength", help="Turn denoising up (>1) or down (<1): a factor on the noise level the model reads (noise-map models; 0-4)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Folder of clean originals (same relative paths) to score PSNR/SSIM."),
    device: str = typer.Option("auto", "--device", callback=_device),
    ensemble: bool = typer.Option(False, "--ensemble", help="Average over the 8 flips/rotations: 8x slower; measured +0.25-0.29 dB (CBSD68, sigma 15-50) and +0.49 dB (CC15 camera photos) with the colour model, +0.06-0.12 dB with the gray one (bench/denoise.py --sets cbsd68,cc15 --models skip-dae-color,skip-dae-gray --ensemble --skip-bm3d)."),
    batches: int = typer.Option(1, "--batches", min=1, help="Split the work into N batches run concurrently (fan-out)."),
    task_runner: str = typer.Option("threads", "--task-runner", help="threads: the batches share this machine's cores; dask: they run on a Dask cluster (the `dask` extra)."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Scheduler of the Dask cluster (tcp://host:8786); default: a temporary local cluster."),
    max_pixels: int = typer.Option(120_000_000, "--max-pixels", min=1, help="Refuse images with more pixels (read from the header, before decoding: decompression bombs). Raise it for big scans; images above 360,000 pixels are denoised band by band from 8/16-bit samples."),
    strip_metadata: bool = typer.Option(False, "--strip-metadata", help="Do not copy EXIF (camera, date, GPS), DPI and PNG text to the outputs (kept by default; the ICC colour profile is always kept)."),
    jpeg_quality: Optional[int] = typer.Option(None, "--jpeg-quality", min=1, max=100, help="Quality of JPEG and lossy WebP outputs; default: JPEG at the quality estimated from each input, WebP 90."),
):
    """Denoise every image in a folder (incremental: unchanged images already done are skipped). A file that
    cannot be read is reported and the rest are done; the exit status is then 1."""
    _check_task_runner(task_runner, dask_address)
    if noise not in ("auto", "camera", "gaussian"):
        raise typer.BadParameter(f"{noise!r}: auto, camera or gaussian", param_hint="--noise")
    if not 0 < strength <= 4:
        raise typer.BadParameter(f"{strength:g}: a factor in (0, 4]; 1 is the level the model reads", param_hint="--strength")
    _job_folders(in_dir, out_dir)
    from flows.denoise import check_job, check_unlocked
    from flows.pipelines import denoise_run_flow

    # Fail in a second, not after Prefect has started: the folders and the model must make sense.
    check_job(in_dir.expanduser().resolve(), out_dir.expanduser().resolve(), model, sigma, reference, noise, strength)
    check_unlocked(out_dir)
    report = _run_flow(denoise_run_flow, in_dir=str(in_dir), out_dir=str(out_dir), model=model, sigma=sigma,
                       noise=noise, strength=strength,
                       reference=str(reference) if reference else None, device=device, ensemble=ensemble,
                       batches=batches, task_runner=task_runner, dask_address=dask_address, max_pixels=max_pixels,
                       strip_metadata=strip_metadata, jpeg_quality=jpeg_quality)
    print_report(report)
    if report["counts"]["failed"]:
        raise typer.Exit(1)


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
    from rich.markup import escape         # file names may hold [brackets]

    if report.get("models"):
        out.print("  models: " + escape(", ".join(f"{name} ({n})" for name, n in report["models"].items())))
    levels = sorted(r["noise_level"] for r in report["images"] if r.get("status") == "processed" and "noise_level" in r)
    if levels:
        strength = report.get("strength", 1)
        out.print(f"  noise level read: {levels[0]:.1f}-{levels[-1]:.1f} (median {levels[len(levels) // 2]:.1f}, "
                  f"0-255 scale){f'; denoised at {strength:g}x that (--strength)' if strength != 1 else ''}")
    for w in report.get("warnings", []):
        out.print(f"  [yellow]warning:[/] {escape(w)}", highlight=False)
    for f in report["failed"][:10]:
        out.print(f"  [red]failed[/] {f['file']}: {f['reason']}")
    if len(report["failed"]) > 10:
        out.print(f"  ... and {len(report['failed']) - 10} more (see report.json)")
    notes = [(r["file"], n) for r in report["images"] for n in r.get("notes", [])] \
        + [(f["file"], f["reason"]) for f in report.get("left_out", [])]
    for file, note in notes[:10]:                 # frames or pages left out, Pillow warnings, folder links
        out.print(f"  [yellow]note[/] {file}: {note}")
    if len(notes) > 10:
        out.print(f"  ... and {len(notes) - 10} more notes (see report.json)")
    if report.get("reference"):
        images = report["images"]
        unscored = [r for r in images if "reference" in r]
        scored = len(images) - len(unscored)
        line = f"  scored against {report['reference']}: {scored} of {len(images)} images"
        if unscored:
            reasons = "; ".join(f"{r['file']}: {r['reference']}" for r in unscored[:3])
            line += f" ({len(unscored)} not: {reasons}{', ...' if len(unscored) > 3 else ''})"
        out.print(line)
    if "mean" in report:
        m = report["mean"]
        out.print(f"  mean PSNR {_db(m['input_psnr'])} (input) -> {_db(m['psnr'])} (denoised), SSIM {m['ssim']:.3f}")
    out.print(f"  report: {Path(report['out_dir']) / '.aeflow' / 'report.json'}")
    sheets = report.get("contact_sheets", [])
    if sheets:
        out.print(f"  contact sheet{'s' if len(sheets) > 1 else ''}: {sheets[0]}"
                  + (f" ... {Path(sheets[-1]).name} ({len(sheets)} pages)" if len(sheets) > 1 else ""))


@app.command("models")
def list_models():
    """List shipped and trained models with their metrics."""
    from flows.catalog import describe, shipped_models, trained_models

    rows = [describe(folder) for folder in shipped_models() + trained_models()]
    params = lambda d: f"{d['parameters']:,} parameters" if d["parameters"] else ""  # noqa: E731
    if out.width < 120:                          # a table would cut names (typed after --model): a list instead
        out.print("[bold]models[/] (--model NAME)")
        for d in rows:
            out.print(f"[bold]{d['name']}[/] ({d['source']} {d['kind']})", soft_wrap=True)
            out.print("    " + ", ".join(v for v in (d["takes"], d["validation"], params(d),
                                                     f"{d['steps']} steps" if d["steps"] else "") if v))
        return
    table = Table("name", "source", "kind", "takes", Column("params", justify="right"), "validation",
                  Column("steps", justify="right"), title="models (--model NAME)")
    for d in rows:
        table.add_row(d["name"], d["source"], d["kind"], d["takes"], f"{d['parameters']:,}" if d["parameters"] else "",
                      d["validation"], str(d["steps"] or ""))
    out.print(table)


@app.command("demo")
def demo(sigma: float = typer.Option(25.0, "--sigma", min=0, max=255, help="Noise added to the demo photos (0-255 scale).")):
    """Add noise to a few of scikit-image's photos, denoise them with the shipped models, show the gain."""
    from flows.pipelines import demo_flow

    result = _run_flow(demo_flow, sigma=sigma)
    report = result["denoise"]
    table = Table("image", "noisy PSNR", "denoised PSNR", "SSIM", "model")
    for r in report["images"]:
        if "psnr" in r:
            table.add_row(r["file"], _db(r["input_psnr"]), _db(r["psnr"]), f"{r['ssim']:.3f}", r.get("model", ""))
    out.print(table)
    print_report(report)
    out.print("[dim]The gray photos are new to the gray model (trained on Train400). astronaut, coffee and chelsea "
              "were in the colour model's training set (optimistic figures); grace_hopper (from matplotlib) was not.[/]")
    lv, mu = result["levels"], result["music"]
    w, full = lv["windows"], lv["level"]
    out.print(f"[bold]levels[/]: {w['delivered']['playable']} playable Mario windows and a "
              f"{full['shape'][1]}-column level ({sum(w['rejected'].values()) + sum(full['rejected'].values())} "
              f"samples rejected and redrawn: unplayable, broken pipes, copies or repeats); contact sheet "
              f"{lv['contact_sheet']}")
    mel, ch = mu["melodies"], mu["chorales"]
    out.print(f"[bold]music[/]: {len(mel['clips'])} melodies and {len(ch['clips'])} four-part chorale phrases of "
              f"{mel['bars']} bars at {mel['tempo']:g} bpm (MIDI + piano-roll PNG each) in {mel['out_dir']} and "
              f"{ch['out_dir']}")


@server_app.command("start")
def server_start(host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback needs --auth."),
                 port: int = typer.Option(4200, "--port"),
                 auth: Optional[str] = typer.Option(None, "--auth", help="user:password required on every API call but health."),
                 database: Optional[str] = typer.Option(
                     None, "--database", help="SQLAlchemy URL of the database, e.g. postgresql+asyncpg://user:pw@host:5432/prefect "
                                              "(many workers or hosts); default $PREFECT_SERVER_DATABASE_CONNECTION_URL, else SQLite under outputs/.")):
    """Start a Prefect server in the background (SQLite under outputs/ unless --database); later commands use it."""
    from flows.server import start

    info = start(host, port, auth, database)
    out.print(f"Prefect server running (pid {info['pid']}): UI {info['ui_url']}  API {info['api_url']}  "
              f"database: {info.get('database', '?')}", soft_wrap=True)


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
    from flows.schedule import next_fire, schedule_denoise as create

    full = create(str(in_dir), str(out_dir), cron, timezone, model, sigma, str(reference) if reference else None,
                  batches, name, task_runner=task_runner, dask_address=dask_address, noise=noise, strength=strength)
    out.print(f"scheduled [bold]{full}[/] ({cron}, {timezone}; next {next_fire(cron, timezone):%Y-%m-%d %H:%M %Z}); "
              f"start a worker with `aeflow worker start` and run it now with `aeflow schedule run {full.split('/')[1]}`")


@schedule_app.command("list")
def schedule_list():
    """Deployments: their folders, schedules, next runs (or paused) and the last run's outcome."""
    from flows.schedule import list_schedules

    table = Table("name", Column("IN -> OUT", overflow="fold"), "schedule", "next runs", "last run")
    for r in list_schedules():
        table.add_row(r["name"], f"{r['in_dir']} -> {r['out_dir']}", ", ".join(r["schedules"]),
                      "paused" if r["paused"] else "\n".join(r["next"]), r["last"])
    out.print(table)


@schedule_app.command("pause")
def schedule_pause(name: str = typer.Argument(..., help="Deployment name (see `aeflow schedule list`).")):
    """Stop NAME's scheduled runs until `schedule resume` (`schedule run` still runs it by hand)."""
    from flows.schedule import pause

    out.print(f"paused {pause(name)}")


@schedule_app.command("resume")
def schedule_resume(name: str = typer.Argument(..., help="Deployment name (see `aeflow schedule list`).")):
    """Run NAME on its schedule again."""
    from flows.schedule import resume

    out.print(f"resumed {resume(name)}")


@schedule_app.command("delete")
def schedule_delete(name: str = typer.Argument(..., help="Deployment name (see `aeflow schedule list`).")):
    """Delete NAME and its scheduled runs (its output folder and past runs stay)."""
    from flows.schedule import delete

    out.print(f"deleted {delete(name)}")


@schedule_app.command("run")
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
        print_report(report)
        if report["counts"]["failed"]:
            raise typer.Exit(1)
    elif wait and r["state"] != "Completed":
        raise typer.Exit(1)


@worker_app.command("start")
def worker_start(pool: str = typer.Option("aeflow", "--pool"), name: Optional[str] = typer.Option(None, "--name")):
    """Run a process worker in the foreground (Ctrl-C stops it); several may run, on several hosts."""
    from flows.schedule import start_worker

    start_worker(pool, name)


music_app = typer.Typer(help="Music clips: train a conv VAE on melodies or chorales, sample, morph, measure.",
                        no_args_is_help=True)
app.add_typer(music_app, name="music")


def _music_wav_check(wav: bool) -> None:
    if wav:
        from flows.music import wav_tools

        try:
            wav_tools()
        except RuntimeError as e:
            raise typer.BadParameter(str(e), param_hint="--wav") from None


def _program(value: str | None) -> int | None:
    """--program flute / 73 -> 73, checked before any work."""
    from formats.music import parse_program

    try:
        if value is not None and value.strip().startswith("-"):
            raise ValueError(f"program {value}: General MIDI programs are 0-127")
        return None if value is None else parse_program(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _print_clips(report: dict, what: str) -> None:
    s = report.get("summary") or {}
    out.print(f"[bold]{len(report['clips'])} {what}[/] in {report['out_dir']} (MIDI + piano-roll PNG each"
              f"{', WAV' if report['clips'] and 'wav' in report['clips'][0] else ''}) for "
              f"{', '.join(report['instruments'])}; model {report['model']}")
    if s:
        out.print(f"  mean per clip: {s['notes']:.0f} notes, empty bars {s['empty_bars']:.2f}, pitch classes per bar "
                  f"{s['upc']:.2f}, notes >= an 8th {s['qualified']:.2f}, in scale {s['in_scale']:.2f}")
    if k := report.get("in_key"):
        from flows.music import KEY_ROUNDS

        rest = ", ".join(f"{v} in {name}" for name, v in k["others"].items())
        out.print(f"  in {k['asked']}: {k['clips']} of {k['of']} clips" + (f"; {rest} (the other mode after "
                  f"{KEY_ROUNDS} redraws, or no transposition to the tonic fit the model's range)" if rest else ""))
    _print_removed(report)
    out.print(f"  report: {Path(report['out_dir']) / 'report.json'}")


def _print_removed(report: dict) -> None:
    if report.get("removed_earlier"):
        out.print(f"  [dim]replaced an earlier run here: removed its {len(report['removed_earlier'])} files that "
                  "this run did not write again[/]")


@music_app.command("train")
def music_train(
    corpus: str = typer.Option("essen", "--corpus", help="bach (371 chorales), essen (Essen folk songs), oneills, ryans, airds, folk (music21's corpus, parsed once and cached); nottingham (Nottingham.mat in data/nottingham/, or its path); or a folder of MIDI files."),
    mode: str = typer.Option("melody", "--mode", help="melody (one voice; the soprano of a chorale) or chorale (four voices, S A T B)."),
    bars: int = typer.Option(2, "--bars", min=1, help="Window length in 4/4 bars of 16 steps (2, 4, 8 ...)."),
    condition: str = typer.Option("none", "--condition", help="none (vae), or a conditional VAE on key (tonic + mode), mode (major/minor) or meter."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only this many pieces, evenly spread over the corpus (quick trials)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", min=0, help="Wall-clock training budget (default 5 when no --steps)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps instead of a time budget."),
    epoch_steps: int = typer.Option(200, "--epoch-steps", min=1, help="Steps between validations/checkpoints."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(2e-3, "--lr"),
    widths: Optional[str] = typer.Option(None, "--widths", help="Conv channels per level, e.g. 64,128,256 (each level halves time)."),
    latent: int = typer.Option(32, "--latent", min=1, help="Latent dimensions."),
    beta: float = typer.Option(1.0, "--beta", min=0, help="KL weight (beta-VAE); below 1 reconstructs better, samples worse."),
    ar: int = typer.Option(0, "--ar", help="The decoder also sees this many steps before each step (e.g. 6): more short notes kept together and a better ELBO, but z holds less (reconstructions and morphs weaker) and sampling goes step by step, 3-5x slower. 0: none."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", callback=_device, help="auto, cpu or cuda."),
    refresh: bool = typer.Option(False, "--refresh", help="Re-ingest and retrain instead of reusing cached stages."),
):
    """Train a music VAE (cached: an unchanged second run trains nothing; a killed run resumes)."""
    if mode not in ("melody", "chorale"):
        raise typer.BadParameter(f"{mode!r}: melody or chorale", param_hint="--mode")
    if ar < 0:
        raise typer.BadParameter(f"{ar}: 0 (none) or a number of steps", param_hint="--ar")
    if condition not in ("none", "key", "mode", "meter"):
        raise typer.BadParameter(f"{condition!r}: none, key, mode or meter", param_hint="--condition")
    from flows.music import CORPORA, nottingham_file
    from formats.music import find_midi

    known = corpus in CORPORA or corpus == "nottingham" or Path(corpus).suffix == ".mat"
    if not known and not Path(corpus).expanduser().is_dir():
        raise typer.BadParameter(f"{corpus!r} is neither a corpus ({', '.join(CORPORA)}, nottingham) nor a folder "
                                 "of MIDI files", param_hint="--corpus")
    if corpus == "nottingham":
        nottingham_file()                                 # a missing file says where to put it, before Prefect starts
    elif not known:
        find_midi(Path(corpus).expanduser())              # a folder without MIDI files, before Prefect starts
    model = {"latent": latent, "beta": beta, "ar": ar, **({"widths": _ints(widths)} if widths else {})}
    if minutes is None and steps is None:
        minutes = 5.0
    training = {k: v for k, v in dict(minutes=minutes, steps=steps, epoch_steps=epoch_steps, batch_size=batch_size,
                                      lr=lr, seed=seed, device=device).items() if v is not None}
    from flows.pipelines import music_train_flow

    folder = _run_flow(music_train_flow, source=corpus, mode=mode, bars=bars, limit=limit, model=model,
                       training=training, condition=None if condition == "none" else condition, refresh=refresh)
    cfg = json.loads((Path(folder) / "config.json").read_text())
    d, m = cfg["data"], cfg["metrics"]
    out.print(f"[bold]model[/] {folder}")
    out.print(f"  {cfg['model']['kind']}, {d['mode']} {d['bars']}-bar windows of {d['source']}: {d['train_windows']:,} "
              f"training windows (transposed), {d['val_windows']:,} held out; {cfg['parameters']:,} parameters, "
              f"{cfg['steps']} steps in {cfg['seconds']:.0f} s")
    out.print(f"  held-out reconstruction accuracy {m['val_acc']:.3f}, ELBO {m['val_elbo']:.1f} nats/window, "
              f"KL {m['val_kl']:.1f}; sample with `aeflow music sample --model {Path(folder).name} OUT_DIR`")
    _print_skipped(Path(folder).parents[1] / "ingest-music" / d.get("ingest", ""))


@music_app.command("sample")
def music_sample(
    out_dir: Path = typer.Argument(..., help="Where the clips go (clip-000.mid, clip-000.png, ..., report.json)."),
    n: int = typer.Option(20, "--n", min=1, help="Number of clips."),
    bars: int = typer.Option(8, "--bars", min=1, help="Clip length in 4/4 bars; longer than the model's window = a smooth latent walk, window by window."),
    tempo: float = typer.Option(100.0, "--tempo", min=4, max=1000, help="Beats per minute written into the MIDI files."),
    program: Optional[str] = typer.Option(None, "--program", callback=_program, help="Instrument: a General MIDI name (flute, piano, violin, choir, 'church organ') or program number, 0-based (73 flute); default: the model's (flute for melodies, choir for chorales)."),
    key: Optional[str] = typer.Option(None, "--key", help="Key, e.g. D, F#m, Bb: a key-conditioned model is asked for it (a clip that comes out in another key is drawn again), else clips are transposed to it. Default: keys as often as the training corpus uses them."),
    seed: int = typer.Option(0, "--seed"),
    model: str = typer.Option("auto", "--model", help="auto (the shipped 2-bar melody model; with --key its key-conditioned twin), a model folder, or a trained model's name prefix."),
    walk: float = typer.Option(0.35, "--walk", min=0, max=3.1416, help="Latent step between windows in radians: 0 repeats the window, 1.57 draws each afresh."),
    temperature: float = typer.Option(1.0, "--temperature", min=0, help="Each step's token is drawn from softmax(logits / T): 1 samples the model as trained; below 1 smoother, longer notes; 0 takes the most likely."),
    wav: bool = typer.Option(False, "--wav", help="Also render WAV with fluidsynth (needs fluidsynth and fluid-soundfont-gm)."),
):
    """Generate new MIDI clips (with piano-roll PNGs) from a music model."""
    _out_folder(out_dir)
    from flows.music import music_data, parse_key, resolve_music_model
    from flows.pipelines import music_sample_flow

    _music_wav_check(wav)
    if key:
        parse_key(key)                                    # mistakes before Prefect starts
    music_data(resolve_music_model(model, key))
    report = _run_flow(music_sample_flow, out_dir=str(out_dir), model=model, n=n, bars=bars, tempo=tempo,
                       program=program, key=key, seed=seed, wav=wav, angle=walk,
                       temperature=temperature)
    _print_clips(report, "clips")


@music_app.command("interpolate")
def music_interpolate(
    a: Path = typer.Argument(..., help="MIDI file to start from (its first window is used)."),
    b: Path = typer.Argument(..., help="MIDI file to end at."),
    out_dir: Path = typer.Argument(..., help="Where step-00.mid ... and morph.mid (all steps in a row) go."),
    steps: int = typer.Option(8, "--steps", min=2, help="Points on the path, A and B included."),
    tempo: float = typer.Option(100.0, "--tempo", min=4, max=1000),
    program: Optional[str] = typer.Option(None, "--program", callback=_program, help="Instrument: a General MIDI name or number, as for `music sample`."),
    model: str = typer.Option("auto", "--model", help="auto, a model folder, or a trained model's name prefix."),
    wav: bool = typer.Option(False, "--wav", help="Also render WAV (fluidsynth)."),
):
    """Morph tune A into tune B through the model's latent space (spherical interpolation of their codes)."""
    from formats.music import BadMidi, read_midi

    _out_folder(out_dir)
    for path, hint in ((a, "A"), (b, "B")):
        try:
            read_midi(path)                       # a clear error before Prefect starts
        except BadMidi as e:
            raise typer.BadParameter(str(e), param_hint=hint) from None
    _music_wav_check(wav)
    from flows.pipelines import music_interpolate_flow

    report = _run_flow(music_interpolate_flow, a=str(a), b=str(b), out_dir=str(out_dir), model=model,
                       steps=steps, tempo=tempo, program=program, wav=wav)
    _print_clips(report, "steps")
    r = report["reconstruction_accuracy"]
    out.print(f"  reconstruction accuracy of the end points: A {r['a']:.2f}, B {r['b']:.2f}; all steps in a row: "
              f"{Path(report['out_dir']) / 'morph.mid'}")
    for label, flags in report.get("read_notes", {}).items():
        out.print(f"  [yellow]{label.upper()}: {'; '.join(flags)}[/]")
    if min(r.values()) < 0.5:                   # the shipped models reconstruct their own kind of tune at 0.86-0.97
        out.print("  [yellow]the model does not hold an end point well (below 0.5): the morph starts or ends far from "
                  "it; a model of the tune's kind (melody or chorale, `aeflow models`) does better[/]")


@music_app.command("stats")
def music_stats(
    target: Path = typer.Argument(..., help="A MIDI file or a folder of them (recursive)."),
    mode: str = typer.Option("melody", "--mode", help="melody (top line of all parts) or chorale (first four parts as voices)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
):
    """Metrics of MIDI files: empty bars, pitch classes per bar, qualified notes, in-scale rate, range, intervals, key
    (and soprano-bass tonal distance for chorales). Bad files are listed with a reason (exit status 1)."""
    from formats.music import find_midi

    if mode not in ("melody", "chorale"):
        raise typer.BadParameter(f"{mode!r}: melody or chorale", param_hint="--mode")
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such file or folder")
    if target.is_dir():
        find_midi(target)                                 # a folder without MIDI files, before Prefect starts
    from flows.pipelines import music_stats_flow

    report = _run_flow(music_stats_flow, target=str(target), mode=mode)
    if as_json:
        print(json.dumps(report, indent=2))
        raise typer.Exit(1 if report["counts"]["failed"] else 0)
    cols = ["notes", "empty_bars", "upc", "qualified", "in_scale", "pitch_range", "interval", "key"]
    heads = ["notes", "empty bars", "pcs/bar", ">= 8th", "in scale", "range", "interval", "key"]
    if mode == "chorale":
        cols.append("tonal_distance")
        heads.append("TD S-B")
    table = Table(_file_column(), "bars", *heads)
    fmt = lambda v: "" if v is None else v if isinstance(v, str) else f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in report["files"]:
        table.add_row(r["file"], f"{r['steps'] / 16:g}", *(fmt(r.get(c, "")) for c in cols))
    if report["files"]:
        table.add_row("[bold]mean[/]", "", *(fmt(report["mean"].get(c, "")) for c in cols))
    out.print(table)
    c = report["counts"]
    out.print(f"{c['read']} read, [{'red' if c['failed'] else 'green'}]{c['failed']} failed[/] of {c['files']} files")
    for f in report["failed"][:10]:
        out.print(f"  [red]failed[/] {f['file']}: {f['reason']}")
    flagged = [r for r in report["files"] if r.get("flags")]
    for r in flagged[:10]:                                 # read, but not as written (moved notes, empty voices)
        out.print(f"  [yellow]note[/] {r['file']}: {'; '.join(r['flags'])}")
    if len(flagged) > 10:
        out.print(f"  ... and {len(flagged) - 10} more files with notes (--json)")
    if c["failed"]:
        raise typer.Exit(1)


levels_app = typer.Typer(help="Game levels: train a VAE on tile grids, sample playable levels, interpolate, check.",
                         no_args_is_help=True)
app.add_typer(levels_app, name="levels")
GAMES_HELP = ("mario, kid_icarus, lode_runner or zelda; or the blend mario+kid_icarus (--data: the Kid Icarus "
              "folder, Mario from mario-gpt; or MARIO_DIR,KI_DIR)")


@levels_app.command("train")
def levels_train(
    game: str = typer.Option("mario", "--game", help=f"Game: {GAMES_HELP}; or a VGLC legend .json for any other game (whole levels, or --width windows; no playability checker)."),
    data: Optional[Path] = typer.Option(None, "--data", help="VGLC game folder (its processed/ subfolder is used when present). Default for mario: the levels in the mario-gpt package."),
    model: str = typer.Option("vae", "--model", help="vae, or cvae (Mario: conditioned on enemies/pipes/gaps buckets; mario+kid_icarus: on the game, for --blend)."),
    beta: float = typer.Option(0.5, "--beta", min=0, help="Weight of the KL term (1 = plain VAE; smaller: sharper, less regular latent space)."),
    latent: int = typer.Option(32, "--latent", min=1, help="Latent dimensions."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Conv features per level, e.g. 16,32,64 (the default; 64,128,256 with --units columns)."),
    units: str = typer.Option("cells", "--units", help="cells: a softmax over tiles per cell; columns: over the whole columns of the training windows, each drawn after the ones before it (pipes, stairs and blocks come out whole; tile-pattern KL 10x lower on Mario)."),
    ar: Optional[int] = typer.Option(None, "--ar", help="Columns before each column that the decoder sees (default: 3 with --units columns, else 0; cells need 0)."),
    width: Optional[int] = typer.Option(None, "--width", min=2, help="Window width in columns (Mario: 28 default, 16 usual too; Kid Icarus: window height)."),
    playable_only: Optional[bool] = typer.Option(None, "--playable-only/--all-units", help="Learn from the units the game's checker passes, or from all (default: playable only for Mario, whose unplayable windows are cuts that start over a gap; all for the other games, whose unplayable levels and rooms are content)."),
    steps: int = typer.Option(6000, "--steps", min=1, help="Optimiser steps (the shipped mario-vae: 6000, 9 minutes on 2 CPU cores)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", callback=_device, help="auto, cpu or cuda."),
    refresh: bool = typer.Option(False, "--refresh", help="Rebuild the cached ingest and training stages."),
):
    """Ingest a game's levels (cut into training units) and train a VAE on them; both stages are cached."""
    if units not in ("cells", "columns"):
        raise typer.BadParameter(f"{units}: cells or columns", param_hint="--units")
    if ar is not None and (ar < 0 or (ar and units == "cells")):
        raise typer.BadParameter(f"{ar}: columns >= 0; cells take 0", param_hint="--ar")
    from flows.levels import BLENDS, _sources, blend_sources

    # no --data, or no level files in it: said before Prefect starts, not as a failed flow run
    (blend_sources if game in BLENDS else _sources)(game, str(data) if data else None)
    from flows.pipelines import levels_train_flow

    model_cfg = {"beta": beta, "latent": latent, **({"widths": _ints(widths)} if widths else {}),
                 **({"ar": ar} if ar is not None else {})}
    training = {"steps": steps, "batch_size": batch_size, "seed": seed, "device": device,
                "epoch_steps": max(1, min(500, steps))}
    folder = _run_flow(levels_train_flow, game=game, data=str(data) if data else None, kind=model, model=model_cfg,
                       training=training, width=width, refresh=refresh, units=units, playable_only=playable_only)
    cfg = json.loads((Path(folder) / "config.json").read_text())
    m = cfg["metrics"]
    left_out = cfg["data"].get("left_out_unplayable")
    out.print(f"[bold]model[/] {folder}")
    out.print(f"  {cfg['model']['kind']} on {cfg['data']['train_windows']} {game} units "
              f"{'' if left_out is None else f'(the playable ones; {left_out} unplayable left out) '}"
              f"{tuple(cfg['model']['shape'])}, {cfg['parameters']:,} parameters, {cfg['steps']} steps in {cfg['seconds']:.0f} s")
    # files the ingest could not use, told apart from the unplayable units above ("0 left out" hid 409 of them)
    _print_skipped(Path(folder).parents[1] / "levels-ingest" / cfg["data"]["ingest"])
    out.print(f"  validation (held-out levels {', '.join(cfg['data']['held_out'])}): tile accuracy {m['val_acc']:.3f}, "
              f"ELBO {m['val_elbo']:.1f} nats, KL {m['val_kl']:.1f}")
    out.print(f"  sample with: aeflow levels sample --model {folder} OUT_DIR")


@levels_app.command("sample")
def levels_sample(
    out_dir: Path = typer.Argument(..., help="Folder for the levels (NAME.txt + NAME.png), contact_sheet.png and report.json."),
    n: int = typer.Option(50, "--n", min=1, help="How many levels."),
    length: Optional[int] = typer.Option(None, "--length", min=1, help="Mario: full-length levels of this many columns (a latent walk decoded window by window, seams checked). Default: one window."),
    seed: int = typer.Option(0, "--seed", help="Seed of the torch.Generator that draws every latent."),
    cond: Optional[str] = typer.Option(None, "--cond", help="Mario windows with these features: e.g. enemies=many,pipes=some,gaps=none (none/few/some/many); a cvae draws them (auto: the shipped mario-cvae)."),
    raw: bool = typer.Option(False, "--raw", help="Keep the raw decoder output, playable or not (default: playable only, resampled)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0, help="0: the most likely tile (or column) per step; 0.5-1: drawn from the decoder (richer; a cell model's tiles get noisier). Default: 1 for a model with an ar head (the shipped column models), else 0."),
    model: str = typer.Option("auto", "--model", help="auto (the shipped mario-columns: whole columns, so pipes and blocks come out whole; with --cond the shipped mario-cvae), mario-vae (shipped: a tile per cell), a model folder, or a shipped or trained model's name or unique prefix."),
    blend: Optional[float] = typer.Option(None, "--blend", help="Game-blend cvae (--game mario+kid_icarus) only: weight of Kid Icarus in [0, 1]; 0 = pure Mario, 1 = pure Kid Icarus."),
    spread: float = typer.Option(1.0, "--spread", min=0, max=1, help="Latent spread in (0, 1]: 1 samples the whole prior; lower keeps to its centre, less varied and, for the cell model, more often playable (mario-vae windows at 0.6 with --temperature 1: 98.7 % raw playable, median of 5 seeds; the originals: 98.2 %)."),
):
    """Sample new levels; by default only playable ones (how many were rejected is reported). Exit status 1
    when fewer than --n could be delivered."""
    _out_folder(out_dir)
    from flows.levels import check_sample
    from flows.pipelines import levels_sample_flow

    check_sample(None if model == "auto" else model, cond, spread, length, blend)     # mistakes before Prefect starts
    r = _run_flow(levels_sample_flow, out_dir=str(out_dir), model=None if model == "auto" else model, n=n,
                  length=length, seed=seed, cond=cond, raw=raw, temperature=temperature, blend=blend, spread=spread)
    raw_p, d = r["raw_playability"], r["delivered"]
    out.print(f"[bold]{d['of']} {r['game']} {r['kind']}s[/] {tuple(r['shape'])} in {r['seconds']:.1f} s -> {out_dir}")
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    out.print(f"  playable: raw {pct(raw_p['rate'])} of {raw_p['of']} drawn (95 % CI {pct(raw_p['ci95'][0])}-"
              f"{pct(raw_p['ci95'][1])}), delivered {pct(d['rate'])}; originals {r['originals_rate']}")
    rejected = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r["rejected"].items())
    out.print("  rejected: none (--raw keeps every draw)" if r.get("raw") else f"  rejected: {rejected}")
    if "novelty" in r:
        out.print(f"  novel {r['novelty']['novel']:.1%} (nearest training window differs in {r['novelty']['nn_hamming']:.1%} "
                  f"of tiles), distinct {r['diversity']['distinct']:.1%}, TPKL 2x2 {r['tpkl']['k2']:.3f}")
    if "raw_rules" in r:                     # a blend: each game's rule on the raw samples
        out.print("  rules (raw): " + ", ".join(f"{g} {pct(v['rate'])}" for g, v in r["raw_rules"].items())
                  + "; tile shares: " + ", ".join(f"{g}-only {v:.1%}" for g, v in r.get("tile_shares", {}).items()))
    if r.get("shortfall"):
        out.print(f"  [red]{r['shortfall']}[/]")
    _print_removed(r)
    sheet = f"contact sheet: {Path(out_dir) / 'contact_sheet.png'}; " if "contact_sheet.png" in r["outputs"] else ""
    out.print(f"  {sheet}report: {Path(out_dir) / 'report.json'}")
    if r.get("shortfall"):                      # fewer than asked: a script must not take it for the whole batch
        raise typer.Exit(1)


@levels_app.command("interpolate")
def levels_interpolate(
    level_a: Path = typer.Argument(..., help="First level file (VGLC text)."),
    level_b: Path = typer.Argument(..., help="Second level file."),
    out_dir: Path = typer.Argument(..., help="Folder for step-NNN.txt/.png, contact_sheet.png, report.json."),
    steps: int = typer.Option(8, "--steps", min=2, help="Points on the line between the two encodings, ends included."),
    model: str = typer.Option("auto", "--model", help="auto (the shipped mario-vae: its latent holds a window's tiles, so the ends come back nearly whole: 0.994 of held-out windows' tiles), a model folder, or a trained model name."),
):
    """Blend two levels through the latent space (wide levels window by window)."""
    _out_folder(out_dir)
    from flows.pipelines import levels_interpolate_flow

    r = _run_flow(levels_interpolate_flow, level_a=str(level_a), level_b=str(level_b), out_dir=str(out_dir),
                  steps=steps, model=None if model == "auto" else model)
    out.print(f"{r['steps']} steps of {r['width']} columns ({r['windows']} window(s)) -> {out_dir}; playable: "
              + " ".join("[green]y[/]" if p else "[red]n[/]" for p in r["playable"]))
    e = r["ends_match"]
    out.print(f"  the ends are the model's decodings of A and B: {e['a']:.1%} and {e['b']:.1%} of their tiles come back")
    if r.get("cut"):
        out.print(f"  [yellow]{r['cut']}[/]")


@levels_app.command("check")
def levels_check(
    target: Path = typer.Argument(..., help="A level file, or a folder (every *.txt under it)."),
    game: str = typer.Option("mario", "--game", help=f"Game: {GAMES_HELP}."),
    mode: str = typer.Option("auto", "--mode", help="Mario: window, level, or auto (window up to 32 columns); both start on any standable cell of the first 3 columns and must reach the last column."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
):
    """Playability report for any level files (ours or not), beside the checker's pass rate on the originals.
    Files that cannot be read are listed with a reason (exit status 1); unplayable levels are a result, not an error."""
    from formats.levels import get_legend

    get_legend(game)                                      # an unknown game, before Prefect starts
    if mode not in ("auto", "window", "level"):
        raise typer.BadParameter(f"{mode!r}: auto, window or level", param_hint="--mode")
    from flows.levels import files_to_check

    files_to_check(target)                                # missing, or a folder without level files
    from flows.pipelines import levels_check_flow

    r = _run_flow(levels_check_flow, path=str(target), game=game, mode=mode)
    if as_json:
        print(json.dumps(r, indent=2))
        raise typer.Exit(1 if r["bad"] else 0)
    table = Table(_file_column(), "shape", "playable")
    for lv in r["levels"][:50]:
        verdict = "[green]yes[/]" if lv["playable"] else "[red]no[/]"
        if "rooms_playable" in lv:
            verdict = f"{lv['rooms_playable']} / {lv['rooms_with_doors']} rooms"
        table.add_row(lv["file"], "x".join(map(str, lv["shape"])), verdict)
    out.print(table)
    if len(r["levels"]) > 50:
        out.print(f"  ... and {len(r['levels']) - 50} more (--json)")
    s = r["summary"]
    if s:
        unit = " rooms" if r["unit"] == "rooms" else ""
        out.print(f"[bold]{s['playable']} / {s['of']}{unit} playable[/] ({s['rate']:.1%}, 95 % CI {s['ci95'][0]:.1%}-{s['ci95'][1]:.1%})"
                  f"; originals under this checker: {r['originals']}")
    if r.get("skipped"):
        out.print(f"  skipped {len(r['skipped'])} VGLC path annotation(s), copies of levels checked here, e.g. "
                  f"{r['skipped'][0]['file']}")
    for f in r["bad"][:10]:
        out.print(f"  [red]bad[/] {f['reason']}")
    if r["bad"]:
        raise typer.Exit(1)


family_app = typer.Typer(help="The autoencoder family (ae, dae, contractive_ae, vae, cvae) on digits, MNIST, faces or "
                              "an image folder: train, sample, compare with PCA.", no_args_is_help=True)
app.add_typer(family_app, name="family")
FAMILY_KINDS = ("ae", "dae", "contractive_ae", "vae", "cvae")


def _family_data(data: str) -> str:
    if data not in ("digits", "mnist", "faces") and not Path(data).expanduser().is_dir():
        raise typer.BadParameter(f"{data}: digits, mnist, faces or an image folder (or a folder of MNIST IDX files)",
                                 param_hint="--data")
    return data


@family_app.command("train")
def family_train(
    kind: str = typer.Option("vae", "--kind", help="ae, dae (denoising), contractive_ae, vae (--beta > 1: a beta-VAE) or cvae (conditioned on the label)."),
    data: str = typer.Option("digits", "--data", help="digits (scikit-learn's 8x8, the default), mnist (IDX files in data/mnist, $AEFLOW_MNIST, or give their folder), faces (scikit-image lfw_subset) or an image folder."),
    latent: int = typer.Option(2, "--latent", min=1, help="Code size (2: the codes can be drawn directly)."),
    beta: Optional[float] = typer.Option(None, "--beta", min=0, help="vae/cvae: weight of the KL term (1 = the plain VAE; 4: a beta-VAE; too strong and the code collapses)."),
    body: str = typer.Option("mlp", "--body", help="mlp or conv."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Hidden sizes (mlp) or channels (conv), e.g. 512,256."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps (default per set: digits 3000, mnist 6000)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", min=0.01, help="A time budget instead of --steps."),
    size: int = typer.Option(28, "--size", min=4, help="An image folder's images are resized to SIZE x SIZE gray."),
    name: Optional[str] = typer.Option(None, "--name", help="The model folder's name instead of KIND-DATA."),
    seed: int = typer.Option(0, "--seed"),
    refresh: bool = typer.Option(False, "--refresh", help="Train again instead of using the cached model."),
):
    """Train one member of the family; prints the model folder (usable by folder, name or unique prefix)."""
    if kind not in FAMILY_KINDS:
        raise typer.BadParameter(f"{kind}: one of {', '.join(FAMILY_KINDS)}", param_hint="--kind")
    if body not in ("mlp", "conv"):
        raise typer.BadParameter(f"{body}: mlp or conv", param_hint="--body")
    if beta is not None and kind not in ("vae", "cvae"):
        raise typer.BadParameter(f"only vae and cvae weigh a KL term, not {kind}", param_hint="--beta")
    if steps is not None and minutes is not None:
        raise typer.BadParameter("give --steps or --minutes, not both", param_hint="--minutes")
    _family_data(data)
    from flows.pipelines import family_train_flow

    folder = _run_flow(family_train_flow, kind=kind, data=data, latent=latent, beta=beta, body=body,
                       widths=_ints(widths), steps=steps, minutes=minutes, size=size, name=name, seed=seed,
                       refresh=refresh)
    cfg = json.loads((Path(folder) / "config.json").read_text())
    m, d = cfg["metrics"], cfg["data"]
    out.print(f"[bold]model[/] {folder}", soft_wrap=True)
    out.print(f"  {cfg['model']['kind']} on {d['train_windows']} {d['data']} images {tuple(cfg['model']['shape'])}, "
              f"z={cfg['model']['latent']}, {cfg['parameters']:,} parameters, {cfg['steps']} steps in {cfg['seconds']:.0f} s")
    out.print(f"  validation ({d['val_windows']} held-out): mse {m['val_mse']:.4f}, loss {m['val_loss']:.2f} nats per image"
              + (f", KL {m['val_kl']:.2f}" if "val_kl" in m else ""))
    out.print(f"  see it: aeflow latent map {Path(folder).name} OUT_DIR" + (f"; aeflow family sample {Path(folder).name}"
              f"{' --label 7' if cfg['model']['kind'] == 'cvae' else ''} OUT_DIR" if cfg['model']['kind'] in ('vae', 'cvae') else ""))


@family_app.command("sample")
def family_sample(
    model: str = typer.Argument(..., help="A vae or cvae: folder, name or unique prefix (see `aeflow models`)."),
    out_dir: Path = typer.Argument(..., help="Folder for samples[-labelL].png and report.json."),
    label: Optional[int] = typer.Option(None, "--label", min=0, help="cvae: the label (digit) to draw in many styles."),
    n: int = typer.Option(64, "--n", min=1, max=1024, help="How many samples."),
    seed: int = typer.Option(0, "--seed"),
    temperature: float = typer.Option(0.0, "--temperature", min=0, help="0: the decoder's mean image; >0: pixels drawn."),
):
    """Samples from a vae's prior (a cvae's: of one label, in many styles) as one PNG grid."""
    from flows.pipelines import family_sample_flow

    report = _run_flow(family_sample_flow, model=model, out_dir=str(out_dir), label=label, n=n, seed=seed,
                       temperature=temperature)
    out.print(f"{report['n']} samples of {report['model']}: {report['png']}", soft_wrap=True)


@family_app.command("compare")
def family_compare(
    out_dir: Path = typer.Argument(..., help="Folder for report.json and beta-sweep.png."),
    data: str = typer.Option("digits", "--data", help="digits, mnist, faces or an image folder."),
    latent: str = typer.Option("2,8", "--latent", help="Code sizes, e.g. 2,8."),
    beta_sweep: str = typer.Option("0.25,1,4,16", "--beta-sweep", help="The vae's betas at the largest code size."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Steps per model (default per set)."),
):
    """Train every kind at every code size (cached) beside PCA, and a beta sweep: one table and plots."""
    latents = _ints(latent, "--latent")
    try:
        betas = [float(b) for b in beta_sweep.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{beta_sweep}: numbers, e.g. 0.25,1,4,16", param_hint="--beta-sweep") from None
    _family_data(data)
    from flows.family import summary_table
    from flows.pipelines import family_compare_flow

    report = _run_flow(family_compare_flow, data=data, latents=tuple(latents), betas=tuple(betas),
                       out_dir=str(out_dir), steps=steps)
    out.print(summary_table(report), soft_wrap=True)
    out.print(f"report: {Path(out_dir) / 'report.json'}", soft_wrap=True)


if __name__ == "__main__":
    main()
