"""Peak memory of denoising one large photo (not a test): the issue's bound is about 2 GB for 8000x6000.

Writes a synthetic colour JPEG of the given size, denoises it with the shipped colour model in a fresh
process (`flows.denoise.denoise_folder`, tiles of 512 px + 32 px margins), and prints the child's peak
RSS and seconds next to a small image's, measured in the same run.

    .venv/bin/python bench/bigimage.py [--size 8000x6000]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

RUN = ("import resource, sys; from flows.denoise import denoise_folder; "
       "r = denoise_folder(sys.argv[1], sys.argv[2], progress=False); "
       "print(r['counts']['processed'], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def make(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)          # smooth colour fields
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 20, (h, w, 3)).astype(np.int16)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=95)


def measure(folder: Path, out: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RUN, str(folder), str(out)], capture_output=True, text=True,
                       cwd=ROOT, check=True)
    processed, rss_kb = map(int, r.stdout.split())
    assert processed == 1, r.stdout
    return time.perf_counter() - t0, rss_kb / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="8000x6000")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    work = ROOT / "outputs" / "bench" / "bigimage"
    rows = []
    for name, (ww, hh) in (("small", (481, 321)), ("large", (w, h))):
        folder = work / f"in-{name}"
        if not (folder / "photo.jpg").is_file():
            make(folder / "photo.jpg", ww, hh)
        secs, gib = measure(folder, work / f"out-{name}-{time.time_ns()}")
        rows.append((name, f"{ww}x{hh}", ww * hh / 1e6, secs, gib))
    print("| image | size | MP | seconds (whole process) | peak RSS (GiB) |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f} |")


if __name__ == "__main__":
    main()
