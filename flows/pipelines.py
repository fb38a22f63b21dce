"""The Prefect flows of every job (denoise, levels, music): thin wrappers that run the plain stage
functions as a few coarse tasks (never one per image: a task costs 5-9 ms and SQLite stalls under
hundreds) and publish artifacts. Tasks pass paths, stage results (a folder and its manifest) and small JSON,
never tensors. Everything they call
works without Prefect too (flows/denoise.py, levels.py, music.py import no Prefect)."""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from pathlib import Path

from flows.server import start_early

start_early()      # the command line's temporary Prefect API starts now, while Prefect and torch load below

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.demo import prepare_demo
from flows.denoise import denoise_files, encoding, finish_job, job_lock, plan_job
from flows.ingest import ingest_images
from flows.levels import (check_levels, demo_levels, ingest_levels, interpolate_levels, sample_levels,
                          sample_summary, train_levels)
from flows.music import demo_music, ingest_music, interpolate_music, music_stats, sample_music, train_music
from flows.stages import StageResult
from flows.train import train_model


def run_flow(flow_fn, params: dict, announce=None):
    """One command's flow run. On PREFECT_API_URL when set (a user's server, or `aeflow server start`'s:
    flows.settings), else on the kept temporary API (flows/server.py), which the next commands reuse instead
    of each starting and migrating their own (7-30 s). Prefect's per-run heartbeat thread is off: it costs
    ~1 s at exit and a run that lives as long as its process does not need it. `announce(message)` hears
    when a temporary API is started."""
    from prefect.settings import temporary_settings

    from flows.server import temporary_api
    from flows.settings import sweep_orphaned_servers

    updates = {"flows.heartbeat_frequency": None}
    with ExitStack() as stack:
        if not os.environ.get("PREFECT_API_URL"):
            sweep_orphaned_servers()             # Prefect's own temporary APIs that killed processes left
            updates["api.url"] = stack.enter_context(temporary_api(announce))
        stack.enter_context(temporary_settings(updates=updates))
        return flow_fn(**params)


def publish_training(key: str, model: StageResult) -> None:
    """A trained model's validation history (kept in its config.json, not in the manifest) as the run's table
    artifact."""
    from models.checkpoints import read_config

    create_table_artifact(key=key, table=read_config(model.folder)["history"],
                          description=f"Validation per epoch of {model.folder.name}: {model.manifest['metrics']}")


# Our stages cache themselves by content (flows/stages.py): Prefect's own result cache stays off.
ingest_task = task(name="ingest-images", cache_policy=NO_CACHE)(ingest_images)
train_task = task(name="train-model", cache_policy=NO_CACHE)(train_model)


@flow(name="denoise-train")
def denoise_train_flow(data: str | None = None, model: dict | None = None, training: dict | None = None,
                       val_fraction: float = 0.05, refresh: bool = False, progress: bool = True,
                       init: str | None = None, name: str | None = None) -> StageResult:
    """Ingest an image folder (default: scikit-image's bundled photos) and train a denoiser on it."""
    ingest = ingest_task(data, refresh=refresh)
    trained = train_task(ingest, model or {"kind": "skip_dae"}, training or {"minutes": 10},
                         val_fraction=val_fraction, refresh=refresh, progress=progress, init=init, name=name)
    publish_training("denoise-train-metrics", trained)
    return trained


@flow(name="denoise-adapt")
def denoise_adapt_flow(noisy_dir: str, model: str = "auto", training: dict | None = None, pd: int = 2,
                       refresh: bool = False, progress: bool = True, name: str | None = None) -> StageResult:
    """Fine-tune a denoiser on a folder of noisy images alone (self-supervised: models/selfsup.py)."""
    from flows.train import adaptation_start

    ingest = ingest_task(noisy_dir, refresh=refresh)
    start, model_cfg = adaptation_start(ingest, model)
    trained = train_task(ingest, model_cfg, {**ADAPT_TRAINING, **(training or {})}, refresh=refresh,
                         progress=progress, init=str(start), name=name, adapt={"pd": pd})
    publish_training("denoise-adapt-metrics", trained)
    return trained


# fine-tuning: a tenth of training's learning rate, short epochs (a 10-minute budget on a CPU is a few hundred
# steps); patches divisible by 2 * pd for the pixel shuffle and the neighbour pairs
ADAPT_TRAINING = {"minutes": 10.0, "lr": 2e-4, "warmup_steps": 20, "batch_size": 8, "patch": 96, "epoch_steps": 50,
                  "select": "neg_loss"}


plan_task = task(name="plan", cache_policy=NO_CACHE)(plan_job)
batch_task = task(name="denoise-batch", cache_policy=NO_CACHE)(denoise_files)
finish_task = task(name="finish", cache_policy=NO_CACHE)(finish_job)


class FilesStillBeingWritten(RuntimeError):
    """Raised after a run when some inputs were still growing; the deployment's retries pick them up."""


@flow(name="denoise-batches")
def batches_flow(plan: dict, parts: list[list], common: dict) -> list[dict]:
    """The batches of one run as concurrent tasks on this flow's task runner (a Dask cluster: see below)."""
    futures = [batch_task.submit(plan, part, progress=False, **common) for part in parts]
    return [f.result() for f in futures]


def dask_batches(address: str | None):
    """`batches_flow` on a Dask cluster: the scheduler at `address` (tcp://host:8786), or a temporary local
    cluster when None. Its workers need this checkout importable and the input/output folders mounted."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RuntimeError("the dask task runner needs prefect-dask: pip install -e '.[dask]'") from None
    return batches_flow.with_options(task_runner=DaskTaskRunner(address=address) if address else DaskTaskRunner())


@flow(name="denoise-run")
def denoise_run_flow(in_dir: str, out_dir: str, model: str = "auto", sigma: float | None = None,
                     reference: str | None = None, device: str = "auto", ensemble: bool = False,
                     batches: int = 1, wait: float = 0.0, retry_pending: bool = False, progress: bool = True,
                     task_runner: str = "threads", dask_address: str | None = None, max_pixels: int | None = None,
                     strip_metadata: bool = False, jpeg_quality: int | None = None, noise: str = "auto",
                     strength: float = 1.0) -> dict:
    """Denoise a folder incrementally: plan, `batches` concurrent batch tasks, finish; publishes the
    per-image table and a summary as artifacts. OUT_DIR is locked for the whole run.

    task_runner: "threads" runs the batches on this machine's cores; "dask" sends them to the Dask
    cluster at `dask_address` (a temporary local one when None). max_pixels (default 120 MP), strip_metadata,
    jpeg_quality: how images are read and written (formats.images.read_image / encode_image)."""
    if task_runner not in ("threads", "dask"):
        raise ValueError(f"task_runner {task_runner!r}: use 'threads' or 'dask'")
    t0 = time.perf_counter()
    log = get_run_logger()               # one line at the start and end of each run: a worker's output shows them
    log.info(f"denoise {in_dir} -> {out_dir}: started (model {model})")
    with job_lock(out_dir, str(flow_run.get_id() or ""), wait):
        plan = plan_task(in_dir, out_dir, model, sigma, ensemble, encoding=encoding(strip_metadata, jpeg_quality),
                         noise=noise, strength=strength)
        todo = plan["todo"]
        n = max(1, min(batches, len(todo)))
        common = dict(model=model, sigma=sigma, device=device, ensemble=ensemble, strip_metadata=strip_metadata,
                      jpeg_quality=jpeg_quality, noise=noise, strength=strength, **({"max_pixels": max_pixels} if max_pixels else {}))
        if not todo:                     # nothing to do: no batch (nor torch, nor a model) to load
            results = []
        elif task_runner == "dask":
            results = dask_batches(dask_address)(plan, [todo[i::n] for i in range(n)], common)
        elif n == 1:
            results = [batch_task(plan, todo, progress=progress, **common)]
        else:   # round-robin split; the cores are shared out so that the batches don't oversubscribe them
            threads = max(1, len(os.sched_getaffinity(0)) // n)
            futures = [batch_task.submit(plan, todo[i::n], progress=False, threads=threads, **common) for i in range(n)]
            results = [f.result() for f in futures]
        report = finish_task(plan, results, reference, time.perf_counter() - t0,
                             {"run": str(flow_run.get_id() or ""), "model": model, "sigma": sigma, "noise": noise,
                              "strength": strength,
                              "ensemble": ensemble, "batches": n,
                              "task_runner": task_runner, "max_pixels": common.get("max_pixels"),
                              "strip_metadata": strip_metadata, "jpeg_quality": jpeg_quality})
    table = report["images"] + [{"file": f["file"], "status": "failed", "reason": f["reason"]} for f in report["failed"]] \
        + [{"file": f["file"], "status": "pending", "reason": f["reason"]} for f in report["pending"]]
    if table:
        create_table_artifact(key="denoise-run-images", table=table, description=f"{in_dir} -> {out_dir}")
    c = report["counts"]
    log.info(f"denoise {in_dir} -> {out_dir}: {c['processed']} processed, {c['skipped']} skipped, {c['failed']} failed, "
             f"{c['pending']} still being written in {report['seconds']:.1f} s")
    create_markdown_artifact(key="denoise-run-summary", markdown=(
        f"**{c['processed']} processed, {c['skipped']} skipped, {c['failed']} failed, {c['pending']} still being "
        f"written** in {report['seconds']:.1f} s ({report['images_per_s']:.2f} images/s)"
        + (f"; mean {report['mean']}" if "mean" in report else "")
        + (f"; models: {', '.join(f'{m} ({n})' for m, n in report['models'].items())}" if report.get("models") else "")
        + "".join(f"\n\n- warning: {w}" for w in report.get("warnings", []))))
    if retry_pending and report["pending"]:
        raise FilesStillBeingWritten(f"{len(report['pending'])} input(s) still being written: "
                                     + ", ".join(f["file"] for f in report["pending"][:5]))
    return report


# What schedules run: the same flow, retrying a while when inputs were still being copied.
scheduled_denoise_flow = denoise_run_flow.with_options(retries=3, retry_delay_seconds=60)


@flow(name="demo")
def demo_flow(sigma: float = 25.0) -> dict:
    """The three jobs on embedded defaults and the shipped models: noisy copies of a few bundled photos
    denoised and scored against the originals; playable Mario levels; melody and four-part chorale clips as MIDI
    files."""
    noisy, clean, out = task(name="prepare-demo", cache_policy=NO_CACHE)(prepare_demo)(sigma)
    report = denoise_run_flow(noisy, out, reference=clean)
    root = Path(out).parent
    levels = task(name="demo-levels", cache_policy=NO_CACHE)(demo_levels)(str(root / "levels"))
    music = task(name="demo-music", cache_policy=NO_CACHE)(demo_music)(str(root / "music"))
    return {"denoise": report, "levels": levels, "music": music}


# ---------------------------------------------------------------- levels

levels_ingest_task = task(name="levels-ingest", cache_policy=NO_CACHE)(ingest_levels)
levels_train_task = task(name="levels-train", cache_policy=NO_CACHE)(train_levels)
levels_sample_task = task(name="levels-sample", cache_policy=NO_CACHE)(sample_levels)
levels_interpolate_task = task(name="levels-interpolate", cache_policy=NO_CACHE)(interpolate_levels)
levels_check_task = task(name="levels-check", cache_policy=NO_CACHE)(check_levels)


@flow(name="levels-train")
def levels_train_flow(game: str = "mario", data: str | None = None, kind: str = "vae", model: dict | None = None,
                      training: dict | None = None, width: int | None = None, refresh: bool = False,
                      progress: bool = True, units: str = "cells", playable_only: bool | None = None) -> StageResult:
    """Ingest a game's levels, then train a vae/cvae on them (both stages cached)."""
    ingest = levels_ingest_task(game, data, width, refresh)
    return levels_train_task(game, data, kind, model, training, width, refresh=refresh, progress=progress,
                             ingest_dir=ingest, units=units, playable_only=playable_only)


@flow(name="levels-sample")
def levels_sample_flow(out_dir: str, model: str | None = None, n: int = 50, length: int | None = None,
                       seed: int = 0, cond: str | None = None, raw: bool = False, temperature: float | None = None,
                       blend: float | None = None, spread: float = 1.0) -> dict:
    """Sample levels (playable only unless `raw`) into OUT_DIR; a markdown summary as the run's artifact.
    `blend`: a game-blend cvae's weight of the second game (flows/levels.py sample_blend); `spread`: the
    latent spread (flows/levels.py sample_levels)."""
    report = levels_sample_task(out_dir, model, n, length, seed, cond, raw, temperature, blend=blend, spread=spread)
    create_markdown_artifact(key="levels-sample", markdown=sample_summary(report))
    return report


@flow(name="levels-interpolate")
def levels_interpolate_flow(**kwargs) -> dict:
    return levels_interpolate_task(**kwargs)


@flow(name="levels-check")
def levels_check_flow(path: str, game: str = "mario", mode: str = "auto", out_json: str | None = None) -> dict:
    return levels_check_task(path, game, mode, out_json)


# ---------------------------------------------------------------- music

music_ingest_task = task(name="ingest-music", cache_policy=NO_CACHE)(ingest_music)
music_train_task = task(name="train-music", cache_policy=NO_CACHE)(train_music)


@flow(name="music-train")
def music_train_flow(source: str = "essen", mode: str = "melody", bars: int = 2, limit: int | None = None,
                     model: dict | None = None, training: dict | None = None, condition: str | None = None,
                     refresh: bool = False, progress: bool = True) -> StageResult:
    """Ingest a corpus or MIDI folder (cached), cut windows, train a VAE (cached)."""
    ingest = music_ingest_task(source, mode, limit, refresh=refresh)
    trained = music_train_task(ingest, bars, model, training, condition, refresh=refresh, progress=progress)
    publish_training("music-train-metrics", trained)
    return trained


@flow(name="music-sample")
def music_sample_flow(**kwargs) -> dict:
    """Sample clips from a music model: MIDI + piano-roll PNG (+ WAV) per clip and report.json."""
    report = task(name="sample-music", cache_policy=NO_CACHE)(sample_music)(**kwargs)
    create_markdown_artifact(key="music-sample", markdown=f"{len(report['clips'])} clips in `{report['out_dir']}`; "
                                                         f"mean stats {json.dumps(report['summary'])}")
    return report


@flow(name="music-interpolate")
def music_interpolate_flow(**kwargs) -> dict:
    """Morph from one MIDI file into another through the model's latent space."""
    return task(name="interpolate-music", cache_policy=NO_CACHE)(interpolate_music)(**kwargs)


@flow(name="music-stats")
def music_stats_flow(**kwargs) -> dict:
    """Metrics of every MIDI file in a folder (bad files listed with a reason)."""
    report = task(name="music-stats", cache_policy=NO_CACHE)(music_stats)(**kwargs)
    if report["files"]:
        create_table_artifact(key="music-stats", table=[{k: v for k, v in r.items() if k != "flags"} for r in report["files"]],
                              description=f"{report['target']}: mean {json.dumps(report['mean'])}")
    return report


# ---------------------------------------------------------------- the autoencoder family

@flow(name="family-train")
def family_train_flow(**kwargs) -> StageResult:
    """Train one member of the autoencoder family (ae, dae, contractive_ae, vae, cvae) on digits, MNIST, faces
    or an image folder (cached by content)."""
    from flows.family import train_family

    trained = task(name="family-train", cache_policy=NO_CACHE)(train_family)(**kwargs)
    publish_training("family-train-metrics", trained)
    return trained


@flow(name="family-sample")
def family_sample_flow(**kwargs) -> dict:
    """A vae's or cvae's samples from the prior, as one PNG grid and report.json."""
    from flows.family import sample_family

    report = task(name="family-sample", cache_policy=NO_CACHE)(sample_family)(**kwargs)
    create_markdown_artifact(key="family-sample", markdown=f"{report['n']} samples of `{report['model']}`"
                             + (f", label {report['label']}" if report["label"] is not None else "")
                             + f": `{report['png']}`")
    return report


@flow(name="family-compare")
def family_compare_flow(**kwargs) -> dict:
    """Every kind at every code size beside PCA, and a beta sweep: one table, plots, report.json."""
    from flows.family import compare_family, summary_table

    report = task(name="family-compare", cache_policy=NO_CACHE)(compare_family)(**kwargs)
    create_markdown_artifact(key="family-compare", markdown=summary_table(report))
    return report


def _latent_flow(command: str):
    """One flow per latent command: the job in a task, a Prefect artifact naming what it drew."""
    import flows.latent as latent

    job = getattr(latent, f"latent_{command}")

    @flow(name=f"latent-{command}")
    def run(**kwargs) -> dict:
        report = task(name=f"latent-{command}", cache_policy=NO_CACHE)(job)(**kwargs)
        create_markdown_artifact(key=f"latent-{command}", markdown=f"`{Path(report['model']).name}`: {command} "
                                 f"-> `{report.get('png') or report.get('out_dir', '')}`; "
                                 + ", ".join(f"{k} {v}" for k, v in report.items()
                                             if k in ("method", "dims", "knn5_2d", "path", "temperature")))
        return report

    return run


latent_map_flow, latent_manifold_flow, latent_traverse_flow, latent_interpolate_flow = (
    _latent_flow(c) for c in ("map", "manifold", "traverse", "interpolate"))


# ---------------------------------------------------------------- anomalies in time series

@flow(name="anomaly-series-train")
def anomaly_series_train_flow(target: str, **kwargs) -> dict:
    """A detector (a 1-D conv AE and its threshold) per CSV of TARGET, each cached by content."""
    from flows.anomaly import train_all

    report = task(name="anomaly-series-train", cache_policy=NO_CACHE)(train_all)(target, **kwargs)
    create_table_artifact(key="anomaly-series-train", description=f"detectors of {target}", table=[
        {"series": d["series"], "detector": Path(d["folder"]).name, "threshold": d["threshold"],
         "train_s": d["seconds"], "bad_rows": d["bad_rows"]} for d in report["detectors"]]
        + [{"series": f["file"], "detector": "failed", "reason": f["reason"]} for f in report["failed"]])
    return report


@flow(name="anomaly-series-score")
def anomaly_series_score_flow(target: str, out_dir: str, **kwargs) -> dict:
    """Scores per point, events and a plot per series of TARGET into OUT_DIR (report.json)."""
    from flows.anomaly import score_series

    report = task(name="anomaly-series-score", cache_policy=NO_CACHE)(score_series)(target, out_dir, **kwargs)
    create_markdown_artifact(key="anomaly-series-score", markdown="\n".join(
        [f"**{len(report['series'])} series scored, {len(report['failed'])} failed** into `{out_dir}`", ""]
        + [f"- {r['series']}: {r['events']} event(s), {r['flagged']} of {r['points']} points flagged"
           for r in report["series"]] + [f"- failed: {f['reason']}" for f in report["failed"]]))
    return report


@flow(name="anomaly-series-update")
def scheduled_series_flow(in_dir: str, out_dir: str, model: str | None = None, column: str | None = None,
                          wait: float = 600.0) -> dict:
    """What `aeflow schedule series` runs: score the points that arrived in each CSV of IN_DIR since the last run
    (flows.anomaly.score_new). OUT_DIR is locked for the run as a denoise run's is."""
    from flows.anomaly import score_new

    log = get_run_logger()
    run = str(flow_run.get_id() or "")
    log.info(f"series {in_dir} -> {out_dir}: started (model: {model or 'each series its own'})")
    with job_lock(out_dir, run, wait):
        report = task(name="anomaly-series-update", cache_policy=NO_CACHE)(score_new)(in_dir, out_dir, model, column,
                                                                                    run=run)
    c = report["counts"]
    summary = (f"{c['points']} new point(s) scored in {c['scored']} series, {c['skipped']} skipped (nothing new), "
               f"{c['failed']} failed, {c['bad_rows']} new bad row(s), {c['pending']} still being written")
    log.info(f"series {in_dir} -> {out_dir}: {summary} in {report['seconds']:.1f} s")
    create_markdown_artifact(key="anomaly-series-update", markdown="\n".join(
        [f"**{summary}** into `{out_dir}`", ""]
        + [f"- {r['series']}: {r['new_points']} new point(s), {r['flagged']} flagged; {r['events']} event(s) in all"
           for r in report["series"]] + [f"- failed: {f['reason']}" for f in report["failed"]]))
    return report


# ---------------------------------------------------------------- anomalies in network traffic

@flow(name="anomaly-traffic-train")
def anomaly_traffic_train_flow(path: str, **kwargs) -> dict:
    """A traffic detector (a VAE on FILE's normal records, its encoding and thresholds), cached by content."""
    from flows.anomaly import train_traffic

    detector = task(name="anomaly-traffic-train", cache_policy=NO_CACHE)(train_traffic)(path, **kwargs)
    create_markdown_artifact(key="anomaly-traffic-train", markdown=(
        f"`{Path(detector['folder']).name}`: a VAE on {detector['fit_records']} normal records of `{path}`, "
        f"{len(detector['features'])} features; thresholds (p95 of {detector['held_records']} held-out normal "
        f"records): score {detector['thresholds']['score']:.4g}, recon_score {detector['thresholds']['recon_score']:.4g}"))
    return detector


@flow(name="anomaly-traffic-score")
def anomaly_traffic_score_flow(path: str, out_dir: str, **kwargs) -> dict:
    """scores.csv (one row per record of FILE) and report.json into OUT_DIR."""
    from flows.anomaly import score_traffic

    report = task(name="anomaly-traffic-score", cache_policy=NO_CACHE)(score_traffic)(path, out_dir, **kwargs)
    create_markdown_artifact(key="anomaly-traffic-score", markdown=(
        f"**{report['flagged']} of {report['records']} records flagged** by `{report['detector']}` into "
        f"`{report['out']}`; {report['records_with_unseen_categories']} with unseen categories, "
        f"{len(report['bad_rows'])} bad rows"))
    return report
