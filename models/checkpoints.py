"""Atomic files, sha256 sidecars, model folders and resumable training state.

A model folder holds `model.safetensors` + `model.safetensors.sha256` + `config.json`, so loading
needs nothing else. Nothing is ever unpickled: weights are safetensors, and the training state
(optimiser, scheduler, RNG) is loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:          # torch and safetensors load in the functions that use them: a command's argument
    import torch           # checks and file helpers (flows.stages, levels, music) answer without them


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:    # a failed write() names no file: name the one meant
            e.filename = str(final)
        raise


def write_bytes_atomic(final: Path, data: bytes) -> None:
    atomic_write(final, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(final: Path, obj) -> None:
    write_bytes_atomic(final, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def check_output_folder(path: Path) -> None:
    """An output folder may exist or not; a file in its place is refused."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: output path exists and is not a folder")


def check_folders(in_dir: Path, out_dir: Path) -> None:
    """Refuse an output folder equal to, inside, or containing the input folder: outputs could
    overwrite inputs (mirrored relative paths) or be taken as inputs on the next run. No torch: the CLI
    calls it before loading anything."""
    if in_dir.is_file():
        raise NotADirectoryError(f"{in_dir}: is a file; give the folder that holds the images")
    if not in_dir.is_dir():
        raise FileNotFoundError(f"{in_dir}: input folder not found")
    check_output_folder(out_dir)
    if out_dir == in_dir or out_dir.is_relative_to(in_dir) or in_dir.is_relative_to(out_dir):
        raise ValueError(f"output folder {out_dir} must lie outside the input folder {in_dir} (and not contain it)")


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

    `dtype=torch.float16` halves the file (shipped weights must stay under 8 MB); loading casts back.
    """
    import safetensors.torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: tmp.write_bytes(safetensors.torch.save(state)))   # full disk: OSError
    write_bytes_atomic(folder / (WEIGHTS + ".sha256"), (sha256_file(folder / WEIGHTS) + "\n").encode())
    write_json_atomic(folder / CONFIG, {"model": config, **(extra or {})})


def read_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no {CONFIG})")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({_first_line(e)})") from None


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a model folder, verified against their sha256 sidecar (safetensors has no checksum)."""
    import safetensors.torch

    path = Path(folder) / WEIGHTS
    sidecar = path.with_name(WEIGHTS + ".sha256")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(f"{folder}: missing {WEIGHTS} or its .sha256 sidecar")
    if sha256_file(path) != sidecar.read_text().strip():
        raise ValueError(f"{path}: sha256 mismatch with its sidecar; refusing to load corrupted weights")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as e:              # SafetensorError (a matching sidecar only proves the bytes are unchanged)
        raise ValueError(f"{path}: not a valid safetensors file ({_first_line(e)})") from None


# ---------------------------------------------------------------- training state

LATEST = "latest"        # a small file naming the newest complete checkpoint directory (a hint; see below)
SUMS = "SHA256SUMS"      # in each step folder, written last: "<sha256>  <name>" for every other file in it
STEP_DIR = re.compile(r"step-\d{9}")
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}   # full disk, quota, file-size limit

log = logging.getLogger("aeflow.checkpoints")


class StorageFull(OSError):
    """A write (a checkpoint, a stage's files) that failed for lack of room: `str()` is the one-line message
    (file, cause, what was kept), without the "[Errno 28]" prefix; `exit_status` is the command's exit status
    for a full disk."""

    exit_status = 4

    def __str__(self) -> str:
        return self.strerror


def storage_error(e: BaseException) -> int | None:
    """The errno of a write that failed for lack of room (ENOSPC, EDQUOT, EFBIG), else None."""
    return e.errno if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS else None


def save_training_state(ckpt_root: Path, step: int, model: torch.nn.Module, state: dict, keep: int = 2) -> Path:
    """Write `ckpt_root/step-<step>/` completely, then point `latest` at it, then prune old ones.

    The folder holds the weights (safetensors), the rest of the state (`state.pt`) and, written last,
    `SHA256SUMS` over both: a folder without it, or whose files fail it, is never resumed. The folder is
    built under a temporary name and renamed into place, so a kill or a full disk at any moment leaves the
    previous checkpoint loadable. `state` holds only tensors, numbers, strings, lists and dicts, so that
    `torch.load(weights_only=True)` can read it back.

    Both files are serialised in memory and written with plain file writes (checkpoints are a few MB):
    torch's own writer reports a full disk as "unexpected pos", without an errno. A full disk raises
    an OSError whose message names the file and says which checkpoint was kept.
    """
    import safetensors.torch
    import torch

    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:09d}"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files = {WEIGHTS: safetensors.torch.save(weights), "state.pt": buffer.getvalue()}
    files[SUMS] = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items()).encode()
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".tmp-"))
    current = final                                   # what a failure message names
    try:
        for name, data in files.items():              # SHA256SUMS last
            current = final / name
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        current = final
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
        current = ckpt_root / LATEST
        write_bytes_atomic(ckpt_root / LATEST, final.name.encode())
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (code := storage_error(e)) is not None:
            kept = [p.name for p in _complete_steps(ckpt_root)]
            kept_text = f"kept the previous checkpoint {kept[-1]}" if kept else "no earlier checkpoint to keep"
            raise StorageFull(code, f"{current}: {os.strerror(code).lower()} while writing the checkpoint of step "
                                    f"{step}; {kept_text} (free some space and run the same command to resume)") from None
        raise
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _complete_steps(ckpt_root: Path) -> list[Path]:
    """Step folders with a SHA256SUMS (not yet verified), oldest first."""
    return sorted(p for p in Path(ckpt_root).glob("step-*") if STEP_DIR.fullmatch(p.name) and (p / SUMS).is_file())


def _read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Verify `folder` against its SHA256SUMS and load it; ValueError (one line, naming the file) if not."""
    import safetensors.torch
    import torch

    try:
        listed = {}
        for line in (folder / SUMS).read_text().splitlines():
            digest, name = line.split("  ", 1)
            listed[name] = digest
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder / SUMS}: missing or unreadable ({e.__class__.__name__}), so the checkpoint "
                         "cannot be verified") from None
    present = {p.name for p in folder.iterdir()} - {SUMS}
    if present != set(listed) or not {WEIGHTS, "state.pt"} <= present:
        raise ValueError(f"{folder}: holds {sorted(present)}, its {SUMS} lists {sorted(listed)}")
    data = {}
    for name, digest in listed.items():
        if (folder / name).is_symlink():
            raise ValueError(f"{folder / name}: a link, not a checkpoint file")
        blob = (folder / name).read_bytes()               # hashed and loaded from the same bytes
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ValueError(f"{folder / name}: sha256 mismatch with {SUMS} (corrupted or modified)")
        data[name] = blob
    try:
        weights = safetensors.torch.load(data[WEIGHTS])
    except Exception as e:                                 # SafetensorError and friends
        raise ValueError(f"{folder / WEIGHTS}: not a valid safetensors file ({_first_line(e)})") from None
    try:
        state = torch.load(io.BytesIO(data["state.pt"]), map_location="cpu", weights_only=True)
    except Exception as e:                                 # UnpicklingError, RuntimeError, EOFError, ...
        what = re.search(r"Unsupported global: GLOBAL \S+", str(e))
        raise ValueError(f"{folder / 'state.pt'}: refused, not a plain-data training state "
                         f"({what.group(0) if what else _first_line(e)})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{folder / 'state.pt'}: refused, not a training state (a {type(state).__name__})")
    return weights, state


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0][:200]}" if text else e.__class__.__name__


def load_training_state(ckpt_root: Path, warn: Callable[[str], None] | None = None
                        ) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(weights, state) of the newest checkpoint that verifies against its SHA256SUMS, or None when there is none.

    A checkpoint that fails (a flipped byte, a missing file, a pickled object) is said through `warn` (default:
    a logging warning) and the previous one is used; the failed ones are then moved aside as `.bad-step-...`,
    so that they are neither pruned in place of a good one nor tried again. The `latest` pointer is only a hint and may only name a step
    folder of `ckpt_root` itself (`../../elsewhere` is ignored, with a warning). Checkpoints that exist but of
    which none is usable raise a one-line ValueError (`--refresh` discards them).
    """
    ckpt_root = Path(ckpt_root)
    warn = warn or log.warning
    if not ckpt_root.is_dir():
        return None
    candidates = sorted((p for p in ckpt_root.glob("step-*") if STEP_DIR.fullmatch(p.name) and p.is_dir()),
                        reverse=True)
    pointer = ckpt_root / LATEST
    if pointer.is_file() or pointer.is_symlink():
        try:
            target = pointer.read_text().strip()
        except (OSError, ValueError):
            target = "(unreadable)"
        hinted = ckpt_root / target
        if STEP_DIR.fullmatch(target) and not pointer.is_symlink() and hinted.is_dir() and not hinted.is_symlink():
            candidates = [hinted] + [c for c in candidates if c != hinted]
        elif candidates or target:
            warn(f"{pointer}: names {target[:100]!r}, not a step folder of {ckpt_root}; ignored")
    problems, skipped = [], []
    for folder in candidates:
        if folder.is_symlink():
            problems.append(f"{folder}: a link, not a checkpoint folder")
        else:
            try:
                loaded = _read_checkpoint(folder)
            except (OSError, ValueError) as e:
                problems.append(str(e))
            else:
                for bad in skipped:              # only once a good one is found: else the next run would start over
                    shutil.rmtree(bad.with_name(f".bad-{bad.name}"), ignore_errors=True)
                    try:
                        bad.rename(bad.with_name(f".bad-{bad.name}"))
                    except OSError:
                        pass
                return loaded
        warn(f"checkpoint skipped: {problems[-1]}")
        skipped.append(folder)
    if problems:
        raise ValueError(f"no usable checkpoint to resume in {ckpt_root}: {problems[0]}; "
                         "--refresh discards the checkpoints and trains from the start")
    return None
