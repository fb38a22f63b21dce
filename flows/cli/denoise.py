"""`aeflow denoise train|run`: image denoisers, and the report a denoising job prints."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer

from flows.cli.common import _device, _ints, _job_folders, _print_skipped, _run_flow, launch, nproc_option
from flows.progress import out

app = typer.Typer(help="Train image denoisers and denoise whole folders.", no_args_is_help=True)


def _parse_sigma(text: str) -> float | list[float]:
    try:
        if "-" in text.strip("-") or ":" in text:
            lo, hi = text.replace(":", "-").split("-")
            return [float(lo), float(hi)]
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give a number (25) or a range for a blind model (0-55)",
                                 param_hint="--sigma") from None


@app.command("train")
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
    nproc: int = nproc_option(),
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
    launch(nproc, batch_size)         # before the flows' import, which starts Prefect's API
    from flows.pipelines import denoise_train_flow

    trained = _run_flow(denoise_train_flow, data=str(data) if data else None, model=model_cfg, training=training,
                        refresh=refresh, init=str(init_dir) if init_dir else None, name=name)
    from flows.catalog import describe

    folder, m = trained.folder, trained.manifest
    d = describe(folder)
    cached = f" [dim](cached: trained {m['created']}; nothing to do, --refresh to retrain)[/]" if trained.cached else ""
    out.print(f"[bold]model[/] {folder}{cached}")
    out.print(f"  {d['kind']}, {d['channels']} channel(s), sigma {d['sigma']}, {d['parameters']:,} parameters, "
              f"{m['steps']} steps in {m['seconds']:.0f} s ({m['patches_per_s']:.0f} patches/s, {m['device']})")
    out.print(f"  validation PSNR {m['metrics']['val_psnr']:.2f} dB; curve: {folder / 'curve.png'}")
    _print_skipped(Path(m["data"]["ingest"]))


@app.command("adapt")
def denoise_adapt(
    noisy_dir: Path = typer.Argument(..., help="Folder of your noisy photos or scans (recursive): no clean images needed."),
    model: str = typer.Option("auto", "--model", help="The denoiser to start from: auto (the blind white-noise model for the images' channels: adapting it to CC15's cameras gained 1.0 dB; adapting the camera-noise model lost 2.4 dB), a shipped name, a trained model's name or folder."),
    minutes: Optional[float] = typer.Option(None, "--minutes", min=0, help="Wall-clock budget (default 10 when no --steps)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps instead of a time budget."),
    pd: int = typer.Option(2, "--pd", min=1, max=4, help="Pixel-shuffle factor: pairs of pixels this far apart in the photo, so that noise spread over neighbours (demosaicing, JPEG) is nearly independent between them; 1 for white noise."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", callback=_device, help="auto, cpu or cuda."),
    refresh: bool = typer.Option(False, "--refresh", help="Adapt again instead of using the cached model."),
    name: Optional[str] = typer.Option(None, "--name", help="Name the adapted model (`denoise run --model NAME`)."),
):
    """Fine-tune a denoiser on your own noisy folder alone (Neighbor2Neighbor, self-supervised); cached like any model."""
    from flows.catalog import PRETRAINED

    if not noisy_dir.is_dir():
        raise typer.BadParameter(f"{noisy_dir}: not a folder", param_hint="NOISY_DIR")
    if name is not None and (not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", name) or (PRETRAINED / name).exists()):
        raise typer.BadParameter(f"{name!r}: a name is up to 40 lower-case letters, digits, '_' and '-', and not a "
                                 "shipped model's", param_hint="--name")
    if minutes is not None and steps is not None:
        raise typer.BadParameter("give --minutes or --steps, not both", param_hint="--steps")
    budget = {"steps": steps, "minutes": None} if steps else {"minutes": minutes or 10.0}
    from flows.pipelines import denoise_adapt_flow

    trained = _run_flow(denoise_adapt_flow, noisy_dir=str(noisy_dir), model=model, pd=pd, refresh=refresh, name=name,
                        training={**budget, "lr": lr, "seed": seed, "device": device})
    folder, m = trained.folder, trained.manifest
    out.print(f"[bold]model[/] {folder}", soft_wrap=True)
    out.print(f"  adapted from {m['config']['init']['model']} on {m['data']['train_images']} noisy image(s): {m['steps']} "
              f"steps in {m['seconds']:.0f} s; held-out self-supervised loss {m['metrics']['val_loss']:.5f}")
    out.print(f"  use it: aeflow denoise run IN_DIR OUT_DIR --model {folder.name}", soft_wrap=True)
    out.print("  [dim]compare it with plain `denoise run` (the camera-noise model) on a few images: on CC15's cameras "
              "the camera model unadapted is better (36.6 dB against 34.9 adapted)[/]", soft_wrap=True)
    _print_skipped(Path(m["data"]["ingest"]))


@app.command("run")
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
    """Denoise every image in a folder (incremental: unchanged images already done are skipped).

    A file that cannot be read is reported and the rest are done; the exit status is then 1."""
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
