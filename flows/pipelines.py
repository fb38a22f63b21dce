"""The Prefect flows: thin wrappers that run the plain stage functions as a few coarse tasks (never one
per image: a task costs 5-9 ms and SQLite stalls under hundreds) and publish artifacts. Tasks pass
paths and small JSON, never tensors. Everything they call works without Prefect too."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.demo import prepare_demo
from flows.denoise import denoise_folder
from flows.ingest import ingest_images
from flows.train import train_model

ingest_task = task(name="ingest-images")(ingest_images)
train_task = task(name="train-model")(train_model)
denoise_task = task(name="denoise-images")(denoise_folder)


@flow(name="denoise-train")
def denoise_train_flow(data: str | None = None, model: dict | None = None, training: dict | None = None,
                       val_fraction: float = 0.05, refresh: bool = False, progress: bool = True) -> str:
    """Ingest an image folder (default: scikit-image's bundled photos) and train a denoiser on it."""
    ingest_dir = ingest_task(data, refresh=refresh)
    model_dir = train_task(ingest_dir, model or {"kind": "skip_dae"}, training or {"minutes": 10},
                           val_fraction=val_fraction, refresh=refresh, progress=progress)
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    create_table_artifact(key="denoise-train-metrics", table=cfg["history"],
                          description=f"Validation per epoch of {Path(model_dir).name}: {cfg['metrics']}")
    return model_dir


@flow(name="denoise-run")
def denoise_run_flow(in_dir: str, out_dir: str, model: str = "auto", sigma: float | None = None,
                     reference: str | None = None, device: str = "auto", ensemble: bool = False,
                     progress: bool = True) -> dict:
    """Denoise a folder incrementally; publishes the per-image table and a summary as artifacts."""
    report = denoise_task(in_dir, out_dir, model=model, sigma=sigma, reference=reference, device=device,
                          ensemble=ensemble, progress=progress)
    table = report["images"] + [{"file": f["file"], "status": "failed", "reason": f["reason"]} for f in report["failed"]]
    if table:
        create_table_artifact(key="denoise-run-images", table=table, description=f"{in_dir} -> {out_dir}")
    c = report["counts"]
    create_markdown_artifact(key="denoise-run-summary", markdown=(
        f"**{c['processed']} processed, {c['skipped']} skipped, {c['failed']} failed** in {report['seconds']:.1f} s "
        f"({report['images_per_s']:.2f} images/s)" + (f"; mean {report['mean']}" if "mean" in report else "")))
    return report


@flow(name="demo")
def demo_flow(sigma: float = 25.0) -> dict:
    """Noisy copies of a few bundled photos, denoised by the shipped models, scored against the originals."""
    noisy, clean, out = task(name="prepare-demo")(prepare_demo)(sigma)
    return denoise_run_flow(noisy, out, reference=clean)
