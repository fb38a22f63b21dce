"""Atomic files, sha256 sidecars, model folders and resumable training state.

A model folder holds `model.safetensors` + `model.safetensors.sha256` + `config.json`, so loading
needs nothing else. Nothing is ever unpickled: weights are safetensors, and the training state
(optimiser, scheduler, RNG) is loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()     # what open() would give; mkstemp alone makes 0600 files


def atomic_write(final: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `final`, fsync it, then rename it into place.

    A crash or a full disk leaves the previous `final` intact and no temporary file behind; a killed
    process (SIGKILL) can leave the hidden `.NAME.XXXX.tmp`, which the next run's sweep removes
    (flows.denoise.sweep_temporaries). The temp lives beside `final`: cross-filesystem renames are copies.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(final: Path, data: bytes) -> None:
    atomic_write(final, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(final: Path, obj) -> None:
    write_bytes_atomic(final, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def check_output_folder(path: Path) -> None:
    """An output folder may exist or not; a file in its place is refused."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: output path exists and is not a folder")


def write_report(folder: Path, report: dict, files: list[str]) -> dict:
    """report.json of a job that writes `files` (names in `folder`) and replaces an earlier run's there: the
    files the earlier report listed and this run did not write again are removed, so that the folder holds
    what the report says (50 levels after 5 leave no level-005..049 behind). Only names an aeflow report
    recorded are touched; anything else in the folder stays."""
    try:
        before = json.loads((folder / "report.json").read_text()).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        before = []
    stale = sorted({f for f in before if isinstance(f, str) and Path(f).name == f and f != "report.json"}
                   - set(files))
    for name in stale:
        (folder / name).unlink(missing_ok=True)
    report = {**report, "outputs": sorted(files), **({"removed_earlier": stale} if stale else {})}
    write_json_atomic(folder / "report.json", report)
    return report


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- model folders

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_model(model: torch.nn.Module, folder: Path, config: dict, *, dtype: torch.dtype | None = None,
               extra: dict | None = None) -> None:
    """Write weights (+ sha256 sidecar) and the completed config (+ metrics etc. in `extra`).

    `dtype=torch.float16` halves the file (shipped weights must stay under 2 MB); loading casts back.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: safetensors.torch.save_file(state, str(tmp)))
    write_bytes_atomic(folder / (WEIGHTS + ".sha256"), (sha256_file(folder / WEIGHTS) + "\n").encode())
    write_json_atomic(folder / CONFIG, {"model": config, **(extra or {})})


def read_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no {CONFIG})")
    return json.loads(path.read_text())


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a model folder, verified against their sha256 sidecar (safetensors has no checksum)."""
    path = Path(folder) / WEIGHTS
    sidecar = path.with_name(WEIGHTS + ".sha256")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(f"{folder}: missing {WEIGHTS} or its .sha256 sidecar")
    if sha256_file(path) != sidecar.read_text().strip():
        raise ValueError(f"{path}: sha256 mismatch with its sidecar; refusing to load corrupted weights")
    return safetensors.torch.load_file(str(path))


# ---------------------------------------------------------------- training state

LATEST = "latest"   # a small file naming the newest complete checkpoint directory


def save_training_state(ckpt_root: Path, step: int, model: torch.nn.Module, state: dict, keep: int = 2) -> Path:
    """Write `ckpt_root/step-<step>/` completely, then point `latest` at it, then prune old ones.

    The pointer flips only once the new directory is whole, so a kill or a full disk at any moment
    leaves the previous checkpoint loadable. `state` holds only tensors, numbers, strings, lists and
    dicts, so that `torch.load(weights_only=True)` can read it back.
    """
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:09d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".tmp-"))
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(weights, str(tmp / WEIGHTS))
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
        write_bytes_atomic(ckpt_root / LATEST, final.name.encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(ckpt_root: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(weights, state) of the newest complete checkpoint, or None when there is none."""
    pointer = Path(ckpt_root) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(ckpt_root) / pointer.read_text().strip()
    weights = safetensors.torch.load_file(str(folder / WEIGHTS))
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    return weights, state
