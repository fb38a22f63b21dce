"""Ingest: image files -> one cached stage folder of training tensors (`images.safetensors`, uint16).

Bad files (empty, truncated, not an image, broken checksum, absurd size) are listed in the manifest's
`bad` with a one-line reason; they never stop the stage. Files whose content repeats an earlier file's are
trained on once and listed in `duplicates` (with the file they repeat).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import safetensors.numpy

import skimage
from flows.stages import Stage, StageResult, open_stage, run_stage
from formats.images import BadImage, find_images, read_image
from models.checkpoints import sha256_file, write_bytes_atomic

VERSION = 1

# scikit-image's bundled natural photos (no download needed): the default clean training set.
BUNDLED_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "rocket.jpg",
                  "motorcycle_left.png", "motorcycle_right.png", "ihc.png", "retina.jpg", "camera.png",
                  "moon.png", "coins.png", "gravel.png", "brick.png", "grass.png", "page.png", "text.png",
                  "cell.png", "microaneurysms.png")


def bundled_photo_files() -> list[Path]:
    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in BUNDLED_PHOTOS if (folder / name).is_file()]


def resolve_sources(data: str | None) -> tuple[list[Path], Path, str]:
    """(files, root, slug) for a folder, or for scikit-image's bundled photos when `data` is None."""
    if data is None:
        files = bundled_photo_files()
        return files, files[0].parent, "skimage-photos"
    root = Path(data).expanduser().resolve()
    if not root.is_dir():
        raise (NotADirectoryError(f"{data}: is a file; --data takes the folder that holds them") if root.is_file()
               else FileNotFoundError(f"{data}: no such folder"))
    files = find_images(root)
    if not files:
        raise ValueError(f"{data}: no image files (.png .jpg .jpeg .tif .tiff .bmp .webp .gif) found")
    return files, root, root.name


def file_sha256(path: Path) -> str:
    """Content hash of a regular file; anything else (FIFO, device, folder) is refused without opening it."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise BadImage(path, "not a regular file")
    return sha256_file(path)


def ingest_images(data: str | None = None, refresh: bool = False) -> StageResult:
    """Decode every image of `data` (or the bundled photos) into a cached stage."""
    files, root, slug = resolve_sources(data)
    hashes, bad = [], []
    for f in files:
        try:
            hashes.append(file_sha256(f))
        except (OSError, BadImage) as e:
            hashes.append(None)
            bad.append({"file": str(f.relative_to(root)), "reason": getattr(e, "reason", None) or f"unreadable: {e}"})
    stage = Stage("ingest", VERSION, slug, config={}, contents=tuple(h for h in hashes if h))

    def fill(tmp: Path) -> dict:
        arrays, index, seen, duplicates = {}, [], {}, []
        for f, sha in zip(files, hashes):
            if sha is None:                           # unreadable: already in `bad`
                continue
            if sha in seen:                           # same bytes as an earlier file: would weigh twice
                duplicates.append({"file": str(f.relative_to(root)), "same_as": str(seen[sha].relative_to(root))})
                continue
            seen[sha] = f
            try:
                img = read_image(f)
            except BadImage as e:
                bad.append({"file": str(f.relative_to(root)), "reason": e.reason})
                continue
            name = f"img{len(index):05d}"
            arrays[name] = np.rint(img.pixels * 65535).astype(np.uint16)     # (H, W, C), exact for 8 and 16 bit
            index.append({"name": name, "file": str(f.relative_to(root)), "sha256": sha,
                          "shape": list(img.pixels.shape), "bit_depth": img.bit_depth})
        if not index:
            raise ValueError(f"{root}: none of the {len(files)} files could be decoded: "
                             + "; ".join(f"{b['file']}: {b['reason']}" for b in bad[:5]))
        # serialised in memory, then written as a file: a full disk is then an OSError naming the file (run_stage
        # makes it one line), where save_file's SafetensorError gives neither errno nor file
        write_bytes_atomic(tmp / "images.safetensors", safetensors.numpy.save(arrays))
        return {"source": str(root), "images": index, "bad": bad, "duplicates": duplicates}

    return run_stage(stage, fill, refresh)


def load_ingested(ingest: StageResult | str | Path) -> tuple[list[dict], list[np.ndarray]]:
    """(index entries, float32 (H, W, C) arrays in [0, 1]) of an ingest stage."""
    ingest = open_stage(ingest)
    entries = ingest.manifest["images"]
    arrays = safetensors.numpy.load_file(str(ingest.folder / "images.safetensors"))
    return entries, [arrays[e["name"]].astype(np.float32) / 65535 for e in entries]
