"""`make demo`: noisy versions of a few bundled photos, for the shipped models to denoise (flows.pipelines.demo_flow)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from flows.ingest import bundled_photo_files
from flows.settings import outputs_root
from formats.images import encode_image, read_image
from models.checkpoints import write_bytes_atomic

DEMO_PHOTOS = ("camera.png", "astronaut.png", "coffee.png", "chelsea.png", "moon.png", "coins.png")


def add_noise(x01: np.ndarray, sigma: float, seed: int, name: str) -> np.ndarray:
    """DnCNN protocol: y = x + sigma/255 N(0, 1), noise seeded by (seed, file name), not clipped."""
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))
    return x01 + (sigma / 255.0) * rng.standard_normal(x01.shape)


def held_out_colour_photo() -> Path:
    """A colour photo the shipped colour model never saw: matplotlib's sample Grace Hopper portrait."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def prepare_demo(sigma: float = 25.0) -> tuple[str, str, str]:
    """(noisy, clean, output) folders under outputs/demo/; the noisy files are made once (seeded)."""
    root = outputs_root() / "demo"
    clean_dir, noisy_dir = root / "clean", root / f"noisy-s{sigma:g}"
    for path in [p for p in bundled_photo_files() if p.name in DEMO_PHOTOS] + [held_out_colour_photo()]:
        img = read_image(path)
        name = path.stem + ".png"
        clean_dir.mkdir(parents=True, exist_ok=True)
        noisy_dir.mkdir(parents=True, exist_ok=True)
        if not (clean_dir / name).is_file():
            write_bytes_atomic(clean_dir / name, encode_image(img.pixels, _as_png(img)))
        if not (noisy_dir / name).is_file():       # saved as 8-bit PNG: clipped and rounded, like a real file
            noisy = add_noise(img.pixels, sigma, 0, name)
            write_bytes_atomic(noisy_dir / name, encode_image(np.clip(noisy, 0, 1), _as_png(img)))
    return str(noisy_dir), str(clean_dir), str(root / f"denoised-s{sigma:g}")


def _as_png(img):
    from dataclasses import replace

    return replace(img, format="PNG", bit_depth=8, alpha=None)
