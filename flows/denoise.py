"""Batch denoise: IN_DIR -> OUT_DIR, mirroring the tree, names and formats, incrementally.

A run is three steps: `plan_job` (what is new or changed), `denoise_files` (one or several batches) and
`finish_job` (index, scores, report), inside `job_lock` (two runs never write one folder at once).
Bookkeeping lives in OUT_DIR/.aeflow/: `index.json` (what was made from which input content with which
model: a re-run skips those), `index.d/` (shards written by running batches), `report.json`,
`contact_sheet-1.png, -2.png...`, `lock` and `lock.json` (who holds it). Inputs are never modified; every output is
written atomically, inside OUT_DIR (a link in OUT_DIR that points out of it is refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock, Timeout

from flows.catalog import resolve_model, weights_key
from flows.ingest import file_sha256
from flows.progress import Bar
from flows.stages import digest
from formats.images import (IMAGE_SUFFIXES, MAX_PIXELS, BadImage, DecodedImage, contact_sheet, encode_image,
                           find_images, map_bands, read_image, read_thumbnail)
from models.checkpoints import check_folders, storage_error, write_bytes_atomic, write_json_atomic
from models import DENOISERS

if TYPE_CHECKING:
    import torch

# torch and the model modules are imported where images are denoised: planning a run (and a run with
# nothing to do) costs no torch, about a second of every command's start

BOOKKEEPING = ".aeflow"
CHUNK = 8                  # images decoded at once: bounds memory, lets same-size images share a batch
WHOLE_IMAGE_PIXELS = 600 * 600   # above this an image is denoised in tiles, alone
SHEET_ROWS = 8             # images per contact-sheet page
SCORES = ("psnr", "ssim", "input_psnr", "reference")   # what a report keeps for an image not re-made
LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601 weights: a colour model's output back to gray
GRAY_AS_COLOUR = "gray image denoised by a colour model as three equal channels, luma taken back"


class FolderLocked(RuntimeError):
    """OUT_DIR is held by another run; the command line exits with `exit_status`, in one line."""

    exit_status = 3


class DiskFull(RuntimeError):
    """No space left while writing into OUT_DIR: the message names the file and what was kept."""

    exit_status = 4


@contextmanager
def _disk_full(path: Path, kept):
    """Turn a full disk (quota, file-size limit) while writing `path` into one DiskFull line; `kept()` says
    what stays."""
    try:
        yield
    except OSError as e:
        if storage_error(e) is None:
            raise
        raise DiskFull(f"{path}: no space left on device; {kept()}") from None


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float | None:
    """PSNR in dB; None for identical images (infinite, and JSON has no infinity)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return None if mse == 0 else round(float(10 * np.log10(peak ** 2 / mse)), 4)


def ssim(a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    """SSIM with the DnCNN-table settings (Gaussian window sigma 1.5, population covariance)."""
    from skimage.metrics import structural_similarity

    a, b = np.squeeze(a_u8), np.squeeze(b_u8)
    return float(structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, channel_axis=2 if a.ndim == 3 else None))


def quantize(x01: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """[0, 1] floats -> the integer levels of the output file, as float64 on the 0-255 scale."""
    levels = 65535 if bit_depth == 16 else 255
    return np.rint(np.clip(x01, 0, 1) * levels) * (255.0 / levels)


def thumbnail(x: np.ndarray, size: int = 512) -> np.ndarray:
    """A strided copy no larger than `size` px (contact sheets must not hold 48 MP images)."""
    step = max(1, -(-max(x.shape[:2]) // size))
    return np.ascontiguousarray(x[::step, ::step])


def check_job(in_dir: Path, out_dir: Path, model: str, sigma: float | None, reference=None,
              noise: str = "auto", strength: float = 1.0) -> None:
    """What a denoise job (run now or scheduled) must have before any work: folders that make sense, a
    reference folder that exists, a model that resolves."""
    check_folders(in_dir, out_dir)
    if reference and not Path(reference).expanduser().is_dir():
        raise FileNotFoundError(f"{reference}: reference folder not found")
    if not 0 < strength <= 4:
        raise ValueError(f"--strength {strength:g}: use a factor in (0, 4] (1 = the level the model reads)")
    Models(model, sigma, noise=noise, strength=strength).identity()


def find_reference(ref_dir: Path, rel: Path) -> Path | None:
    """The clean original of `rel`: same relative path, or same stem with another image suffix."""
    if (ref_dir / rel).is_file():
        return ref_dir / rel
    for p in sorted((ref_dir / rel).parent.glob(rel.stem + ".*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return p
    return None


@dataclass
class Job:
    rel: Path
    sha: str
    image: DecodedImage | None = None
    output: np.ndarray | None = None
    error: str | None = None
    row: dict = field(default_factory=dict)
    row_extra: dict = field(default_factory=dict)     # the noise level it was denoised at (noise-map models)


class Models:
    """Loads each model once, on the chosen device, and chooses per image by channel count. `notes` says
    what of the request a chosen model cannot honour (a --sigma that a blind model takes no notice of)."""

    def __init__(self, request: str, sigma: float | None, device: str = "cpu", ensemble: bool = False,
                 noise: str = "auto", strength: float = 1.0):
        self.request, self.sigma, self.device_name, self.ensemble, self.loaded = request, sigma, device, ensemble, {}
        self.noise, self.strength = noise, strength
        self.folders: dict[int, Path] = {}
        self.notes: list[str] = []

    def folder(self, channels: int) -> Path:
        """The model folder for images of `channels` channels, resolved and checked once (called per image)."""
        if channels not in self.folders:
            folder = resolve_model(self.request, channels, self.sigma, job="denoise", noise=self.noise)
            cfg = json.loads((folder / "config.json").read_text())["model"]
            if cfg["kind"] not in DENOISERS:
                raise ValueError(f"--model {self.request}: {folder.name} is a {cfg['kind']}, not an image denoiser "
                                 f"({', '.join(DENOISERS)}); see `aeflow models`")
            self.folders[channels] = folder
            if cfg.get("noise_map"):                 # it takes a level: --sigma and --strength set it
                return folder
            self._note_sigma(folder, cfg.get("sigma"), channels)
            if self.strength != 1 and (note := f"--strength {self.strength:g}: {folder.name} takes no noise "
                                               "level (not a --noise-map model); it denoises at full strength") \
                    not in self.notes:
                self.notes.append(note)
        return self.folders[channels]

    def _note_sigma(self, folder: Path, trained, channels: int) -> None:
        """A model without a noise-level input takes no --sigma: it only chooses among them. Say when it cannot."""
        if self.sigma is None or trained == self.sigma:
            return
        missing = f"no shipped {'colour' if channels == 3 else 'gray'} model for sigma {self.sigma:g}; " \
            if self.request == "auto" else ""
        what = (f"is blind (trained on sigma {trained[0]:g}-{trained[1]:g}), takes no noise level and estimates it"
                if isinstance(trained, list) else f"was trained for sigma {trained:g} only")
        note = f"--sigma {self.sigma:g}: {missing}{folder.name} {what}"
        if note not in self.notes:
            self.notes.append(note)

    def identity(self) -> str:
        """What decides the output of an image besides its content: the weights that would be used."""
        keys, errors = [], []
        for c in (1, 3):
            try:
                keys.append(weights_key(self.folder(c)))
            except FileNotFoundError as e:       # e.g. no shipped colour model: only gray images can be done
                keys.append(None)
                errors.append(e)
        if len(errors) == 2:
            raise errors[0]                      # no usable model at all: say so before touching any file
        asked = {} if self.sigma is None and self.strength == 1 else {"sigma": self.sigma, "strength": self.strength}
        return digest({"weights": keys, "ensemble": self.ensemble, "version": 1, **asked})

    @cached_property
    def device(self) -> torch.device:
        from models.trainer import pick_device

        return pick_device(self.device_name)

    def levels(self, net: torch.nn.Module, group: list) -> list[float] | None:
        """The noise level each image of `group` is denoised at, for a noise-map model (None for others):
        --sigma when given, else the model's own estimate (from a central crop), times --strength."""
        import torch

        from models.inference import estimate_levels, takes_level

        if not takes_level(net):
            return None
        out = []
        for job in group:
            if self.sigma is not None:
                level = float(self.sigma)
            else:
                px = job.image.pixels                  # float, or uint8/16 for a large image: crop first
                top, left = max(0, (px.shape[0] - 512) // 2), max(0, (px.shape[1] - 512) // 2)
                crop = np.asarray(px[top:top + 512, left:left + 512], dtype=np.float32)
                if px.dtype.kind == "u":
                    crop /= np.iinfo(px.dtype).max
                level = float(estimate_levels(net, torch.from_numpy(crop).permute(2, 0, 1)[None])[0])
            job.row_extra = {"noise_level": round(level, 2), **({"strength": self.strength} if self.strength != 1 else {})}
            out.append(level * self.strength)
        return out

    def __call__(self, channels: int) -> tuple[torch.nn.Module, Path]:
        import torch

        from models.registry import load_model

        folder = self.folder(channels)
        if folder not in self.loaded:
            model = load_model(folder).to(self.device).to(memory_format=torch.channels_last)
            self.loaded[folder] = model
        return self.loaded[folder], folder


@contextmanager
def job_lock(out_dir: str, run: str | None = None, wait: float = 0.0):
    """Hold OUT_DIR's lock for one run. A second run waits up to `wait` seconds, then fails saying which
    run holds it. The lock is an OS file lock, so a killed run's lock is released with its process (a
    stale holder record is simply overwritten)."""
    book = _bookkeeping(out_dir)
    with _disk_full(book, lambda: "nothing was written"):
        book.mkdir(parents=True, exist_ok=True)
    lock = FileLock(book / "lock")
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise FolderLocked(_locked_by(book)) from None
    try:
        with _disk_full(book / "lock.json", lambda: "nothing was written"):
            write_json_atomic(book / "lock.json", {"run": run or f"pid-{os.getpid()}", "pid": os.getpid(),
                                                   "host": socket.gethostname(),
                                                   "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        yield
    finally:
        lock.release()


def _bookkeeping(out_dir) -> Path:
    """OUT_DIR/.aeflow, refused when it is a link that leads out of OUT_DIR (its files are outputs too)."""
    out = Path(out_dir).expanduser().resolve()
    book = out / BOOKKEEPING
    if not book.resolve().is_relative_to(out):
        raise ValueError(f"{book} leads to {book.resolve()}, outside the output folder; remove the link")
    return book


def _locked_by(book: Path) -> str:
    try:
        holder = json.loads((book / "lock.json").read_text())
        who = f"run {holder['run']} (pid {holder['pid']} on {holder['host']}, since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another run"
    return f"{book.parent} is locked by {who}; try again when it has finished"


def check_unlocked(out_dir: Path) -> None:
    """Refuse at once, before Prefect starts, an OUT_DIR that another run holds (the run takes the lock
    itself, so one that starts in between is refused there, the same way)."""
    book = _bookkeeping(out_dir)
    if not (book / "lock").is_file():
        return
    lock = FileLock(book / "lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderLocked(_locked_by(book)) from None
    lock.release()


def _load_index(book: Path) -> tuple[dict, list[str]]:
    """index.json plus the shards that batches write as they go (merged by `finish_job`), and a warning per
    file that cannot be read. Such a file is left out: the index is rebuilt from the others, and the images it
    listed are made again (nothing in the outputs says which input and model made them)."""
    index, warnings = {}, []
    shards = sorted((book / "index.d").glob("*.json")) if (book / "index.d").is_dir() else []
    for path in [book / "index.json"] + shards:
        if not path.is_file():
            continue
        try:
            part = json.loads(path.read_text())
            if not isinstance(part, dict) or not all(isinstance(v, dict) for v in part.values()):
                raise ValueError("not a table of outputs")
        except (OSError, ValueError) as e:
            warnings.append(f"{path}: unreadable ({' '.join(str(e).split())}); index rebuilt without it, "
                            "the images it listed are made again")
            continue
        index.update(part)
    return index, warnings


def _intact(path: Path, entry: dict) -> dict | None:
    """`entry` if the output at `path` is still the one it records (refreshed when only its times changed),
    else None. Same size, mtime and ctime: trusted without reading (a user can set mtime back, not ctime);
    otherwise its sha256 decides, so a re-run reads only the outputs something touched."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry.get("output_bytes"):
        return None
    if (st.st_mtime_ns, st.st_ctime_ns) == (entry.get("output_mtime_ns"), entry.get("output_ctime_ns")):
        return entry
    try:
        sha = file_sha256(path)
    except (OSError, BadImage):
        return None
    if entry.get("output_sha256", sha) != sha:           # an index from before hashes were kept: adopted
        return None
    return {**entry, "output_sha256": sha, "output_mtime_ns": st.st_mtime_ns, "output_ctime_ns": st.st_ctime_ns}


def _output_record(path: Path, data: bytes) -> dict:
    st = path.lstat()
    return {"output_bytes": len(data), "output_sha256": hashlib.sha256(data).hexdigest(),
            "output_mtime_ns": st.st_mtime_ns, "output_ctime_ns": st.st_ctime_ns}


def sweep_temporaries(out_dir: Path) -> int:
    """Remove the temporary files (`.NAME.XXXX.tmp`, models.checkpoints.atomic_write) that a killed run left
    half-written in OUT_DIR; called under the folder's lock, so no live writer owns them."""
    stale = [p for p in out_dir.rglob(".*.tmp") if p.is_file()] if out_dir.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def plan_job(in_dir: str, out_dir: str, model: str = "auto", sigma: float | None = None,
             ensemble: bool = False, settle: float = 1.0, encoding: dict | None = None, noise: str = "auto",
             strength: float = 1.0) -> dict:
    """What a run has to do: images new or changed since the last run with the same model ("todo"),
    the ones already done ("skipped"), unreadable ones ("failed") and ones still being written
    ("pending": their size or mtime changed during `settle` seconds; only files modified in the last
    minute are watched, so older folders cost no wait). Small JSON, for a Prefect task to return."""
    src, dst = Path(in_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    check_folders(src, dst)
    identity = Models(model, sigma, ensemble=ensemble, noise=noise, strength=strength).identity()
    if encoding:   # outputs written with other options (--strip-metadata, --jpeg-quality) are other outputs
        identity = digest({"model": identity, "encoding": encoding})
    sweep_temporaries(dst)
    index, warnings = _load_index(dst / BOOKKEEPING)
    left_out: list[tuple[Path, str]] = []
    files = find_images(src, left_out)
    looks = {f: _look(f) for f in files}
    recent = [f for f, st in looks.items() if st and time.time() - st[1] / 1e9 < 60]
    if recent and settle > 0:
        time.sleep(settle)
    plan = {"in_dir": str(src), "out_dir": str(dst), "identity": identity, "images": len(files),
            "todo": [], "skipped": [], "failed": [], "pending": [], "reindex": {}, "warnings": warnings,
            "left_out": [{"file": str(f.relative_to(src)), "reason": why} for f, why in left_out]}
    for f in files:
        rel = str(f.relative_to(src))
        if f in recent and _look(f) != looks[f]:
            plan["pending"].append({"file": rel, "reason": "still being written (size or time changed)"})
            continue
        try:
            sha = file_sha256(f)
        except (OSError, BadImage) as e:
            plan["failed"].append({"file": rel, "reason": getattr(e, "reason", None) or str(e)})
            continue
        entry = index.get(rel, {})
        kept = _intact(dst / rel, entry) if (entry.get("input_sha256"), entry.get("model")) == (sha, identity) \
            else None
        if kept:
            plan["skipped"].append({"file": rel, "status": "skipped", "model": kept.get("model_name")})
            if kept is not entry:
                plan["reindex"][rel] = kept
        else:
            plan["todo"].append([rel, sha])
    return plan


def _look(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def denoise_files(plan: dict, todo: list[list[str]], model: str = "auto", sigma: float | None = None,
                  device: str = "auto", ensemble: bool = False, progress: bool = True,
                  threads: int | None = None, max_pixels: int = MAX_PIXELS, strip_metadata: bool = False,
                  jpeg_quality: int | None = None, noise: str = "auto", strength: float = 1.0) -> dict:
    """Denoise one batch of a plan's todo list ([relative path, sha256] pairs) and write the outputs.
    max_pixels: larger images are refused from their header; strip_metadata, jpeg_quality: see encode_image.

    Writes what it has done to its own index shard (.aeflow/index.d/) every few seconds, so a killed
    run loses at most those seconds and concurrent batches never write one file. Returns small JSON."""
    src, dst = Path(plan["in_dir"]), Path(plan["out_dir"])
    shard = dst / BOOKKEEPING / "index.d" / f"{digest(todo)[:16]}.json"
    shard.parent.mkdir(parents=True, exist_ok=True)
    models = Models(model, sigma, device, ensemble, noise, strength)
    if threads:
        import torch

        models.device                            # first: on the CPU, picking it sets every core's thread
        torch.set_num_threads(threads)           # concurrent batches share the cores
    rows, failed, entries, last_save = [], [], {}, time.monotonic()
    jobs = [Job(Path(rel), sha) for rel, sha in todo]

    def save_index() -> None:
        with _disk_full(shard, lambda: f"the {len(entries)} outputs this batch wrote are kept but not indexed "
                                      "(a re-run makes them again)"):
            write_json_atomic(shard, entries)

    with Bar(f"denoise {src.name}", enabled=progress) as bar:
        bar.set(0, len(jobs), force=True)
        for start in range(0, len(jobs), CHUNK):
            chunk = jobs[start:start + CHUNK]
            for job in chunk:
                try:
                    # above WHOLE_IMAGE_PIXELS (denoised alone, in tiles): integer samples, one copy
                    job.image = read_image(src / job.rel, max_pixels, integers_above=WHOLE_IMAGE_PIXELS)
                except BadImage as e:
                    failed.append({"file": str(job.rel), "reason": e.reason})
            _denoise_chunk([j for j in chunk if j.image is not None], models)
            for job in chunk:
                if job.error:
                    failed.append({"file": str(job.rel), "reason": job.error})
                if job.image is None or job.output is None:
                    continue
                out_path = dst / job.rel
                if (why := _outside(dst, job.rel)) is not None:         # checked where it is written
                    failed.append({"file": str(job.rel), "reason": why})
                    continue
                data = encode_image(job.output, job.image, strip_metadata, jpeg_quality)
                with _disk_full(out_path, lambda: _kept(shard, entries)):
                    out_path.parent.mkdir(parents=True, exist_ok=True)
                    write_bytes_atomic(out_path, data)
                entries[str(job.rel)] = {"input_sha256": job.sha, "model": plan["identity"],
                                         "model_name": job.row["model"], **_output_record(out_path, data)}
                notes = {"notes": list(job.image.notes)} if job.image.notes else {}  # frames left out, warnings
                rows.append({"file": str(job.rel), "status": "processed", **job.row, **notes})
                job.image = job.output = None
            if time.monotonic() - last_save > 5:             # a killed run loses at most a few seconds
                save_index()
                last_save = time.monotonic()
            bar.set(min(start + CHUNK, len(jobs)), len(jobs), f"{len(failed)} failed" if failed else "", force=True)
    save_index()
    return {"rows": rows, "failed": failed, "device": models.device.type, "warnings": models.notes}


def _outside(dst: Path, rel: Path) -> str | None:
    """Why the output of `rel` may not be written, or None. Outputs never leave OUT_DIR (`dst`, resolved):
    a folder link inside it (OUT/sub -> /elsewhere) would carry them out."""
    parent = (dst / rel).parent.resolve()
    if parent.is_relative_to(dst):
        return None
    return f"its output would go to {parent}, outside {dst} (through a link in the output folder); not written"


def _kept(shard: Path, entries: dict) -> str:
    """What a batch stopped by a full disk leaves: its outputs so far, indexed if the small shard still fits."""
    try:
        write_json_atomic(shard, entries)
        return f"kept the {len(entries)} outputs written before it, indexed (a re-run after freeing space does the rest)"
    except OSError:
        return f"kept the {len(entries)} outputs written before it, not indexed (a re-run makes them again)"


def finish_job(plan: dict, batches: list[dict], reference: str | None = None, seconds: float = 0.0,
               settings: dict | None = None) -> dict:
    """Merge the batches' index shards into index.json, score against `reference`, draw the contact
    sheets and write report.json; returns the report. Images skipped keep the scores the last report gave
    them (a re-run with nothing to do does not wipe them)."""
    src, dst = Path(plan["in_dir"]), Path(plan["out_dir"])
    book = dst / BOOKKEEPING
    with _disk_full(book / "index.json", lambda: "every output is written; their records stay in index.d/ "
                                                 "(the next run merges them)"):
        write_json_atomic(book / "index.json", {**_load_index(book)[0], **plan.get("reindex", {})})
    for shard in (book / "index.d").glob("*.json"):
        shard.unlink()
    rows = plan["skipped"] + [r for b in batches for r in b["rows"]]
    failed = plan["failed"] + [f for b in batches for f in b["failed"]]
    ref = Path(reference).expanduser().resolve() if reference else None
    before = _read_report(book)
    if ref is not None:
        _score(rows, src, dst, ref)
    else:
        earlier = {r.get("file"): r for r in before.get("images", []) if isinstance(r, dict)}
        for row in rows:
            if row["status"] == "skipped" and row["file"] in earlier:
                row.update({k: earlier[row["file"]][k] for k in SCORES if k in earlier[row["file"]]})
    processed = [r for r in rows if r["status"] == "processed"]

    def unwritten() -> str:
        return "the outputs and index.json are written; the report and contact sheets are not"

    levels = {r["file"]: f"noise level {r['noise_level']:.1f}" for r in processed if "noise_level" in r}
    sheets = _sheets(book, [Path(r["file"]) for r in processed], src, dst, ref, unwritten, levels) if processed \
        else [p for p in before.get("contact_sheets", []) if Path(p).is_file()]
    models = Counter(r["model"] for r in rows if r.get("model"))
    report = {"in_dir": str(src), "out_dir": str(dst), **(settings or {}),
              "reference": str(ref) if ref else before.get("reference") if any("ssim" in r for r in rows) else None,
              "device": batches[0]["device"] if batches else None,
              "counts": {"images": plan["images"], "processed": len(processed),
                         "skipped": len(plan["skipped"]), "failed": len(failed), "pending": len(plan["pending"])},
              "seconds": round(seconds, 3), "images_per_s": round(len(processed) / seconds, 3) if processed else 0.0,
              "models": dict(sorted(models.items())), "warnings": _warnings(plan, batches, rows),
              "failed": failed, "pending": plan["pending"], "left_out": plan.get("left_out", []),
              "images": sorted(rows, key=lambda r: r["file"])}
    scored = [r for r in rows if "ssim" in r]
    if scored:
        report["mean"] = {k: round(float(np.mean(v)), 4) if (v := [r[k] for r in scored if r[k] is not None])
                          else None for k in ("psnr", "ssim", "input_psnr")}
    if sheets:
        report["contact_sheets"] = sheets
    with _disk_full(book / "report.json", unwritten):
        write_json_atomic(book / "report.json", report)
    return report


def _read_report(book: Path) -> dict:
    try:
        report = json.loads((book / "report.json").read_text())
        return report if isinstance(report, dict) else {}
    except (OSError, ValueError):
        return {}


def _warnings(plan: dict, batches: list[dict], rows: list[dict]) -> list[str]:
    """One line per thing the run could not do as asked (each said once, in order)."""
    lines = plan.get("warnings", []) + [w for b in batches for w in b.get("warnings", [])]
    by_model: dict[str, list[str]] = {}
    for r in rows:
        if r.get("note") == GRAY_AS_COLOUR:
            by_model.setdefault(r["model"], []).append(r["file"])
    for model, files in sorted(by_model.items()):
        lines.append(f"{model} is a colour model: {len(files)} gray image(s) ({', '.join(files[:3])}"
                     f"{', ...' if len(files) > 3 else ''}) went in as three equal channels, luma taken back, and "
                     "noise equal in all three channels is not what it learnt: use --model auto or a gray model")
    return list(dict.fromkeys(lines))


def _sheets(book: Path, rels: list[Path], src: Path, dst: Path, ref: Path | None, unwritten,
            extra: dict[str, str] | None = None) -> list[str]:
    """contact_sheet-1.png, -2.png...: every image of `rels`, SHEET_ROWS a page, each row named; the pages
    of an earlier run are replaced (a sheet shows one run's work)."""
    pages = []
    for start in range(0, len(rels), SHEET_ROWS):
        data = _sheet(rels[start:start + SHEET_ROWS], src, dst, ref, extra or {})
        if data is not None:
            path = book / f"contact_sheet-{len(pages) + 1}.png"
            with _disk_full(path, unwritten):
                write_bytes_atomic(path, data)
            pages.append(str(path))
    for old in book.glob("contact_sheet*.png"):
        if str(old) not in pages:
            old.unlink()
    return pages


def _sheet(rels: list[Path], src: Path, dst: Path, ref: Path | None, extra: dict[str, str]) -> bytes | None:
    """Contact sheet of input / denoised (/ reference) thumbnails, re-read from disk, the file name under
    each row; None when none of them can be read back."""
    rows, names = [], []
    for rel in rels:
        try:
            cells = [read_thumbnail(src / rel), read_thumbnail(dst / rel)]      # no whole float copy
            if ref is not None and (p := find_reference(ref, rel)) is not None:
                cells.append(read_thumbnail(p))
        except BadImage:
            continue
        rows.append(cells)
        name = str(rel).encode("utf-8", "replace").decode()            # a name that is not UTF-8 still draws
        names.append(f"{name}  ({extra[str(rel)]})" if str(rel) in extra else name)
    if not rows:
        return None
    with_ref = all(len(c) == 3 for c in rows)
    rows = [c if with_ref else c[:2] for c in rows]
    return contact_sheet(rows, ["input", "denoised"] + (["reference"] if with_ref else []), captions=names)


def denoise_folder(in_dir: str, out_dir: str, model: str = "auto", sigma: float | None = None,
                   reference: str | None = None, device: str = "auto", ensemble: bool = False,
                   progress: bool = True, run: str | None = None, wait: float = 0.0, settle: float = 1.0,
                   max_pixels: int = MAX_PIXELS, strip_metadata: bool = False, jpeg_quality: int | None = None,
                   noise: str = "auto", strength: float = 1.0) -> dict:
    """Denoise every image under `in_dir` into `out_dir` in one batch; returns the report (also written
    to OUT_DIR/.aeflow/report.json). ensemble: average over 8 flips/rotations (8x slower). noise: which
    shipped model `auto` takes ("auto"/"camera": real-photo noise; "gaussian": white noise); strength: a
    factor on the noise level a noise-map model is told. The Prefect flow runs the same three steps, with the
    batches fanned out."""
    t0 = time.perf_counter()
    if reference is not None and not Path(reference).expanduser().is_dir():
        raise FileNotFoundError(f"{reference}: reference folder not found")
    check_folders(Path(in_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve())
    with job_lock(out_dir, run, wait):
        plan = plan_job(in_dir, out_dir, model, sigma, ensemble, settle, encoding(strip_metadata, jpeg_quality),
                        noise, strength)
        batch = denoise_files(plan, plan["todo"], model, sigma, device, ensemble, progress, max_pixels=max_pixels,
                              strip_metadata=strip_metadata, jpeg_quality=jpeg_quality, noise=noise, strength=strength)
        return finish_job(plan, [batch], reference, time.perf_counter() - t0,
                          {"model": model, "sigma": sigma, "noise": noise, "strength": strength, "ensemble": ensemble,
                           "max_pixels": max_pixels, "strip_metadata": strip_metadata, "jpeg_quality": jpeg_quality})


def encoding(strip_metadata: bool = False, jpeg_quality: int | None = None) -> dict:
    """The output options that change output bytes, when not the defaults (part of the index identity)."""
    return {k: v for k, v in (("strip_metadata", strip_metadata), ("jpeg_quality", jpeg_quality)) if v}


def _denoise_chunk(jobs: list[Job], models: Models) -> None:
    """Denoise decoded images in place (job.output): same-shape small images share one batch."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        px = job.image.pixels
        key = px.shape if px.shape[0] * px.shape[1] <= WHOLE_IMAGE_PIXELS else ("alone", id(job))
        groups.setdefault(key, []).append(job)
    for group in groups.values():
        try:
            _denoise_group(group, models)
        except (ValueError, RuntimeError, FileNotFoundError) as e:   # this group fails; the job goes on
            for job in group:
                job.error = f"{type(e).__name__}: {e}"


def _denoise_group(group: list[Job], models: Models) -> None:
    """Denoise one group of decoded images (one batch, or one image in tiles) into job.output."""
    import torch

    from models.inference import denoise_batch, denoise_image

    t = time.perf_counter()
    channels = group[0].image.pixels.shape[2]
    net, folder = models(channels)
    # A colour model named for a folder with gray images: the gray goes in as three equal channels and its
    # luma comes back. Noise identical across channels is not what it learnt (the old skip-dae-color gained 2.3-2.6
    # dB on camera, moon and coins at sigma 15-50, skip-dae-gray 7-17 dB); hence the warning.
    as_colour = channels == 1 and net.cfg.channels == 3

    levels = models.levels(net, group)

    def one(x: torch.Tensor) -> torch.Tensor:                               # (C, H, W) -> (C', H, W)
        return denoise_image(net, x.expand(3, -1, -1) if as_colour else x, ensemble=models.ensemble,
                             level=levels[0] if levels else None)

    def back(y: torch.Tensor) -> torch.Tensor:                              # (B, C', H, W) -> (B, C, H, W)
        return torch.einsum("bchw,c->bhw", y, torch.tensor(LUMA, dtype=y.dtype))[:, None] if as_colour else y

    if len(group) == 1 and group[0].image.pixels.dtype.kind == "u":
        # a large image held as integers: denoised band by band into an integer output (no float copy of it)
        def band(b: np.ndarray) -> np.ndarray:                            # (h, W, C) float32 -> (h, W, C)
            with torch.inference_mode():
                return back(one(torch.from_numpy(b).permute(2, 0, 1))[None])[0].permute(1, 2, 0).numpy()
        y = [map_bands(group[0].image.pixels, band)]
    elif len(group) == 1:                      # possibly huge: no stacked copy, tiles inside
        x = torch.from_numpy(group[0].image.pixels).permute(2, 0, 1)               # (H, W, C) -> (C, H, W)
        y = one(x)[None]
    else:
        x = torch.from_numpy(np.stack([j.image.pixels for j in group])).permute(0, 3, 1, 2)
        y = denoise_batch(net, x.expand(-1, 3, -1, -1) if as_colour else x, models.ensemble,
                          torch.tensor(levels) if levels else None)
    if torch.is_tensor(y):
        with torch.inference_mode():                                               # y is an inference tensor
            y = back(y).clamp_(0, 1).permute(0, 2, 3, 1).numpy()                   # (B, H, W, C) views
    for job, out in zip(group, y):
        job.output = out
        job.image = replace(job.image, pixels=np.empty((0, 0, 0), np.float32))   # free the input early
        job.row = {"model": folder.name, "seconds": round((time.perf_counter() - t) / len(group), 4),
                   **job.row_extra}
        if as_colour:
            job.row["note"] = GRAY_AS_COLOUR


def _score(rows: list[dict], src: Path, dst: Path, ref: Path) -> None:
    """PSNR/SSIM of each output (and of its input) against the clean reference, on the output's levels."""
    for row in rows:
        rel = Path(row["file"])
        p = find_reference(ref, rel)
        if p is None:
            row["reference"] = "missing"
            continue
        try:
            clean, out, inp = read_image(p), read_image(dst / rel), read_image(src / rel)
        except BadImage as e:
            row["reference"] = f"unreadable: {e.reason}"
            continue
        if clean.pixels.shape != out.pixels.shape:
            row["reference"] = f"shape {clean.pixels.shape} differs from output {out.pixels.shape}"
            continue
        c, o, i = (quantize(a.pixels, out.bit_depth) for a in (clean, out, inp))
        row.update(psnr=psnr(o, c), ssim=round(ssim(o, c), 4), input_psnr=psnr(i, c))
