"""Content-addressed stage folders: `outputs/<stage>/<slug>-<key12>/`.

The key hashes the stage name, its version, its config slice and either the upstream stage keys or
the *content* of the raw input files (never their paths or mtimes). A folder is built under a
temporary name, its `manifest.json` (sha256 of every file) written last, then renamed into place:
an existing, verified manifest means the work is done; a manifest whose files fail their sha256 is
rebuilt, never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from flows.settings import outputs_root
from models.checkpoints import StorageFull, sha256_file, storage_error, write_json_atomic

MANIFEST = "manifest.json"


def digest(obj) -> str:
    """sha256 of a JSON-able object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-")[:40] or "x"


def content_key(path: Path, limit: int | None = None) -> str:
    """sha256 of a regular file's bytes (its first `limit` when given), for a stage key; anything else (a link, a
    FIFO, a file gone) by its name only: its reader refuses it, and hashing it would follow the link or block."""
    try:
        regular = stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        regular = False
    if not regular:
        return hashlib.sha256(f"not a regular file: {Path(path).name}".encode()).hexdigest()
    if limit is None:
        return sha256_file(path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(limit)).hexdigest()


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    slug: str
    config: dict
    upstream: tuple[str, ...] = ()          # keys of the stages this one reads
    contents: tuple[str, ...] = ()          # sha256 of raw input files (order-free)

    @property
    def key(self) -> str:
        return digest({"stage": self.name, "version": self.version, "config": self.config,
                       "upstream": list(self.upstream), "contents": sorted(self.contents)})

    @property
    def folder(self) -> Path:
        return outputs_root() / self.name / f"{slugify(self.slug)}-{self.key[:12]}"

    @property
    def workdir(self) -> Path:
        """Scratch space that survives a killed run (training checkpoints), removed once the stage is done."""
        return outputs_root() / self.name / ".work" / self.folder.name


@dataclass(frozen=True)
class StageResult:
    """A finished stage: its folder, its manifest (the fill's extra fields included; verified or just written)
    and whether it was already there (`cached`: nothing was built). Callers read the manifest from here, not
    from the folder again."""
    folder: Path
    manifest: dict
    cached: bool


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete, intact stage folder; None if missing or any file fails its sha256."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        for rel, sha in manifest["files"].items():
            if sha256_file(Path(folder) / rel) != sha:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return manifest


def sweep_killed_builds(folder: Path) -> list[Path]:
    """Remove the temporary folders that killed builds of `folder` left (`kill -9` skips their clean-up): those
    named for a process of this host that no longer runs. Another host's, or a live process's, stay."""
    gone = []
    for tmp in folder.parent.glob(f".tmp-{folder.name}-*"):
        m = re.fullmatch(re.escape(f".tmp-{folder.name}-{socket.gethostname()}-") + r"(\d+)-\w+", tmp.name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
            gone.append(tmp)
        except PermissionError:                 # alive, another user's
            pass
    return gone


def open_stage(where: StageResult | str | Path) -> StageResult:
    """A StageResult as it is; a stage folder given as a path (a command-line argument, a model's recorded
    ingest) read with its manifest verified against every file's sha256."""
    if isinstance(where, StageResult):
        return where
    manifest = read_manifest(Path(where))
    if manifest is None:
        raise FileNotFoundError(f"{where}: not a finished stage folder ({MANIFEST} missing, unreadable or a file "
                                "fails its sha256); run the command that builds it again")
    return StageResult(Path(where), manifest, cached=True)


def run_stage(stage: Stage, fill: Callable[[Path], dict], refresh: bool = False) -> StageResult:
    """Build the stage unless it is done. `fill(tmp)` writes the stage's files into `tmp` and returns
    extra manifest fields (small JSON: counts, metrics, reports)."""
    folder = stage.folder
    if not refresh and (manifest := read_manifest(folder)) is not None:
        return StageResult(folder, manifest, cached=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{socket.gethostname()}-{os.getpid()}"
    sweep_killed_builds(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-{owner}-"))
    try:
        info = fill(tmp)
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"stage": stage.name, "version": stage.version, "key": stage.key, "slug": stage.slug,
                    "config": stage.config, "upstream": list(stage.upstream), "files": files,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info}
        write_json_atomic(tmp / MANIFEST, manifest)
        if folder.exists():                     # a broken or refreshed build: move it aside, then drop it
            old = folder.with_name(f".old-{folder.name}-{tmp.name[-8:]}")
            folder.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (code := storage_error(e)) is not None and not isinstance(e, StorageFull):   # StorageFull: said already
            where = Path(getattr(e, "filename", None) or tmp)
            where = folder / where.relative_to(tmp) if where.is_relative_to(tmp) else where
            raise StorageFull(code, f"{where}: {os.strerror(code).lower()} while building this stage; nothing of it "
                                    f"was kept and earlier results are unchanged (free some space and run the same "
                                    f"command again)") from None
        raise
    shutil.rmtree(stage.workdir, ignore_errors=True)
    return StageResult(folder, manifest, cached=False)
