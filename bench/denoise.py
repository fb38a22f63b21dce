"""Denoising benchmark (not a test): noisy input, OpenCV NLM, BM3D / CBM3D and trained models on gray and
colour sets with synthetic Gaussian noise (Set12, BSD68, CBSD68) and on real noisy/clean pairs (CC15).

Protocol: shared/notes/denoise.md, section 1 (DnCNN convention). x = u8/255; y = x + sigma/255 N(0, 1),
seeded by (seed, crc32(file name)), not clipped; outputs clipped to [0, 1] and rounded to uint8;
PSNR (peak 255) and SSIM on uint8. A set whose folder holds `<scene>_real.png` / `<scene>_mean.png` pairs
is a real-noise set: the noisy file is the input, the mean the reference. Prints one table for the Gaussian
sets, one for the real pairs and a compute table (markdown) on stdout, progress on stderr, and writes them
plus per-image numbers to --out (.json and .md). Each baseline needs only its own extra (OpenCV for NLM,
bm3d for BM3D / CBM3D); a missing one drops its row with a note saying what to install.

    .venv/bin/python bench/denoise.py --model skip=outputs/train/<folder> --bm3d-limit 12
    .venv/bin/python bench/denoise.py --limit 2 --sigmas 25 --bm3d-limit 1 --model m=<folder>   # trial
    .venv/bin/python bench/denoise.py --sets cbsd68,cc15 --sigmas 25 --models skip-dae-color,skip-dae-gray
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))         # run as `python bench/denoise.py` from anywhere

import numpy as np
import torch
from PIL import Image

from flows.catalog import resolve_model
from flows.demo import add_noise
from flows.denoise import psnr, ssim
from flows.settings import outputs_root
from models.inference import denoise_image
from models.registry import load_model

# The note's ../shared beside the checkout (a worktree under wt/ has it one level further up).
DATA = next((p for p in (ROOT.parent / "shared" / "data" / "denoise", ROOT.parent.parent / "shared" / "data" / "denoise")
             if p.is_dir()), ROOT.parent / "shared" / "data" / "denoise")
BSD_SHAPE = (1, 321, 481)             # (C, H, W) of a landscape BSD68 image, for GFLOP per image
TRAIN_KEYS = ("patches_per_s", "steps", "seconds", "device", "parameters")
IMAGE_EXT = {".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"}
NOISY_TAG, CLEAN_TAG = "_real", "_mean"   # CC15's names: <scene>_real.png one shot, <scene>_mean.png the mean of 500
CBM3D_GRID = "5,10,15,20,30,40"         # fixed sigmas (0-255) tried on real pairs: CC15 noise RMS 3.6-8.3, best sigma 3-4x it
# Import name -> pip package, for the note that replaces a baseline whose extra is missing.
EXTRAS = {"cv2": "opencv-python-headless", "bm3d": "bm3d", "pywt": "PyWavelets"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def missing_extra(module: str, what: str) -> str | None:
    """None when `module` imports; otherwise the one-line note that replaces `what`'s row."""
    try:
        importlib.import_module(module)
    except ImportError:
        return (f"{what} left out: `{module}` is not installed (`pip install -e '.[bench]'`, "
                f"or `pip install {EXTRAS[module]}`).")
    return None


def to_uint8(x01: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x01, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_image(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im.convert("L" if im.mode in ("L", "P", "1") else "RGB"))


def find_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(scene, noisy, clean) for each `<scene>_real.<ext>` beside its `<scene>_mean.<ext>`, sorted by scene;
    [] when the folder holds no `*_real` image (a clean set, noised here). A noisy file without its
    reference is an error: a silently smaller set would change the mean."""
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXT}
    pairs = []
    for stem, noisy in sorted(files.items()):
        if stem.endswith(NOISY_TAG):
            scene = stem[:-len(NOISY_TAG)]
            clean = files.get(scene + CLEAN_TAG)
            if clean is None:
                raise FileNotFoundError(f"{noisy}: no reference {scene}{CLEAN_TAG}{noisy.suffix} beside it")
            pairs.append((scene, noisy, clean))
    return pairs


def read_set(data: Path, name: str, limit: int | None) -> tuple[str, list]:
    """("gaussian", [(file name, clean u8)]) or ("real", [(scene, noisy u8, clean u8)]), first `limit` only."""
    folder = data / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; --sets takes folder names under --data ({data})")
    pairs = find_pairs(folder)
    if pairs:
        out = []
        for scene, noisy, clean in pairs[:limit]:
            y, x = read_image(noisy), read_image(clean)
            if y.shape != x.shape:
                raise ValueError(f"{noisy}: shape {y.shape} differs from its reference {clean.name} {x.shape}")
            out.append((scene, y, x))
        return "real", out
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)
    if not files:
        raise FileNotFoundError(f"{folder}: no images; --sets takes folder names under --data ({data})")
    return "gaussian", [(p.name, read_image(p)) for p in files[:limit]]


def estimate_noise_sigma(y: np.ndarray, stride: int = 3) -> float:
    """Noise standard deviation of y (H, W[, C]) in y's units: the wavelet-MAD estimate (Donoho; skimage's
    estimate_sigma, mean over channels) of the image sampled every `stride` pixels.

    Camera noise in sRGB is spatially correlated by demosaicing and denoising in the camera, so the finest
    wavelet band sees only part of it: on CC15 the plain estimate reads 0.15-0.36 (mean 0.25) of the noise's
    RMS (noisy - mean); sampled every 3rd pixel, neighbours are nearly independent (as in AP-BSN's
    pixel-shuffle) and it reads 0.64-1.13 (mean 0.89). For white noise the sampling changes nothing."""
    from skimage.restoration import estimate_sigma     # needs PyWavelets (a dependency of bm3d)
    sub = y[::stride, ::stride]
    return float(np.mean(estimate_sigma(sub, channel_axis=-1 if y.ndim == 3 else None)))


def cpu_name() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)    # kernels are asynchronous: the clock must wait for them


# ------------------------------------------- methods: y (H, W[, C]) float64, sigma (0-255 or None) -> (x_hat, s, info)

def nlm(y: np.ndarray, sigma: float):
    import cv2                            # lazy: only this row needs OpenCV
    u8 = to_uint8(y)                      # OpenCV NLM only takes uint8: clip + round first
    t0 = time.perf_counter()
    if u8.ndim == 2:
        out = cv2.fastNlMeansDenoising(u8, None, h=0.9 * sigma, templateWindowSize=7, searchWindowSize=21)
    else:
        out = cv2.fastNlMeansDenoisingColored(u8, None, 0.9 * sigma, 0.9 * sigma, 7, 21)
    return out / 255.0, time.perf_counter() - t0, {}


def bm3d_method(y: np.ndarray, sigma: float):
    """BM3D on gray images, CBM3D (`bm3d_rgb`: block matching on luminance, opponent colour space) on colour."""
    import bm3d                           # lazy: slow import, non-commercial licence, bench-only
    t0 = time.perf_counter()
    if y.ndim == 3:
        out = bm3d.bm3d_rgb(y, sigma / 255.0, profile="np")
    else:
        out = bm3d.bm3d(y, sigma_psd=sigma / 255.0, profile="np")
    return np.reshape(out, y.shape), time.perf_counter() - t0, {}


def bm3d_estimated(y: np.ndarray, sigma=None):
    """(C)BM3D with the noise level estimated from the noisy image itself (estimate_noise_sigma); timed."""
    t0 = time.perf_counter()
    s = estimate_noise_sigma(y) * 255.0
    out, secs, _ = bm3d_method(y, s)
    return out, time.perf_counter() - t0, {"sigma_est": round(s, 3)}


def bm3d_fixed(s: float):
    return lambda y, sigma=None: bm3d_method(y, s)


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one denoise_image call, from forward hooks on the convolutions (a multiply-add = 2)."""
    total = 0.0

    def conv(m, inp, out):
        nonlocal total
        total += 2.0 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def deconv(m, inp, out):
        nonlocal total
        total += 2.0 * inp[0].numel() * (m.out_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    hooks = [m.register_forward_hook(deconv if isinstance(m, torch.nn.ConvTranspose2d) else conv)
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        denoise_image(model, x)
    finally:
        for h in hooks:
            h.remove()
    return total


class ModelMethod:
    """A model folder as a method; remembers FLOPs per image shape and the timed FLOPs and seconds."""

    def __init__(self, name: str, folder: str, device: torch.device, ensemble: bool = False):
        self.name, self.folder, self.device, self.ensemble = name, Path(folder), device, ensemble
        self.model = load_model(self.folder).to(device, memory_format=torch.channels_last)
        self.flops_by_shape: dict[tuple, float] = {}
        self.flops = self.seconds = 0.0

    def __call__(self, y: np.ndarray, sigma: float):
        x = torch.from_numpy(np.ascontiguousarray((y if y.ndim == 3 else y[..., None]).transpose(2, 0, 1),
                                                  dtype=np.float32))   # (H, W, C) -> (C, H, W)
        if x.shape not in self.flops_by_shape:      # the hooked pass doubles as this shape's warm-up
            self.flops_by_shape[x.shape] = count_flops(self.model, x) * (8 if self.ensemble else 1)
        sync(self.device)
        t0 = time.perf_counter()
        out = denoise_image(self.model, x, ensemble=self.ensemble)
        sync(self.device)
        dt = time.perf_counter() - t0
        self.flops, self.seconds = self.flops + self.flops_by_shape[x.shape], self.seconds + dt
        return out.numpy().transpose(1, 2, 0).reshape(y.shape), dt, {}

    def refuses(self, y: np.ndarray) -> str | None:
        """Why this model cannot take y, or None. A gray model denoises colour channel by channel
        (models.inference); a colour model refuses gray images."""
        c = y.shape[2] if y.ndim == 3 else 1
        return (f"a {self.model.cfg.channels}-channel model cannot denoise {c}-channel images"
                if self.model.cfg.channels != 1 and self.model.cfg.channels != c else None)

    def label(self, colour: str = "") -> str:
        """colour: "all" (every image is colour), "some" or "" (none), for a gray model's per-channel note."""
        s = self.model.cfg.sigma
        trained = f"σ{s:g}" if isinstance(s, (int, float)) else f"blind σ{s[0]:g}-{s[1]:g}"
        per_channel = {"all": ", per channel", "some": ", per channel on colour"}.get(colour, "")
        return (f"{self.name} ({self.model.cfg.kind}, {trained}{per_channel if self.model.cfg.channels == 1 else ''}"
                f"{', x8 self-ensemble' if self.ensemble else ''})")


def conv_throughput(device: torch.device, runs: int = 5) -> float:
    """GFLOP/s of a large 3x3 conv, as the machine's achievable reference (same autocast as inference)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(8, 64, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    flops = 2.0 * x.numel() * 64 * 9
    reps = 50 if device.type == "cuda" else 1     # one GPU call is too short to time alone
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        conv(x)
        for _ in range(runs):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                conv(x)
            sync(device)
            times.append((time.perf_counter() - t0) / reps)
    return flops / statistics.median(times) / 1e9


# ---------------------------------------------------------------- tables

def mean(xs):
    xs = [x for x in xs if x is not None]     # psnr() is None for a perfect output
    return sum(xs) / len(xs) if xs else None


def fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def results_table(records, methods, labels, sets, sigmas, n_images, bm3d_n, colour=()) -> str:
    """The Gaussian-noise table: one PSNR / SSIM / s column triple per set and sigma."""
    def sel(m, s, sg, first=None):
        return [r for r in records if r["method"] == m and r["set"] == s and r["sigma"] == sg
                and (first is None or r["index"] < first)]

    has_bm3d = "bm3d" in methods
    header, rows = ["Method"], []
    for s in sets:
        for sg in sigmas:
            header += [f"{s} σ{sg:g} PSNR", "SSIM", "s/img"]
            if has_bm3d and bm3d_n[s] < n_images[s]:
                header.append(f"PSNR, first {bm3d_n[s]} (BM3D subset)")
    for m in methods:
        row = [labels[m]]
        for s in sets:
            for sg in sigmas:
                rs = sel(m, s, sg)
                secs = mean([r["seconds"] for r in rs])
                cell = fmt(secs, ".3f")
                if has_bm3d and m not in ("bm3d", "noisy") and secs:
                    # speed-up on the images BM3D ran on, so both times cover the same pictures
                    b, own = (mean([r["seconds"] for r in sel(k, s, sg, bm3d_n[s])]) for k in ("bm3d", m))
                    cell += f" ({b / own:.0f}× {'CBM3D' if s in colour else 'BM3D'})" if b and own else ""
                row += [fmt(mean([r["psnr"] for r in rs]), ".2f"), fmt(mean([r["ssim"] for r in rs]), ".4f"), cell]
                if has_bm3d and bm3d_n[s] < n_images[s]:
                    row.append(fmt(mean([r["psnr"] for r in sel(m, s, sg, bm3d_n[s])]), ".2f"))
        rows.append(row)
    return md_table(header, rows)


def real_table(records, methods, labels, sets, n_images, bm3d_n, ref: str = "bm3d-est") -> str:
    """The real-pairs table: PSNR / SSIM / s per image per set, and how many times faster than CBM3D
    with its estimated sigma (`ref`) each method is on the images CBM3D ran on."""
    def sel(m, s, first=None):
        return [r for r in records if r["method"] == m and r["set"] == s and (first is None or r["index"] < first)]

    has_ref = ref in methods
    header, rows = ["Method"], []
    for s in sets:
        header += [f"{s} PSNR", "SSIM", "s/img"] + (["× faster than CBM3D"] if has_ref else [])
        if has_ref and bm3d_n[s] < n_images[s]:
            header.append(f"PSNR, first {bm3d_n[s]} (CBM3D subset)")
    for m in methods:
        row = [labels[m]]
        for s in sets:
            rs = sel(m, s)
            secs = mean([r["seconds"] for r in rs])
            row += [fmt(mean([r["psnr"] for r in rs]), ".2f"), fmt(mean([r["ssim"] for r in rs]), ".4f"),
                    fmt(secs, ".3f")]
            if has_ref:
                b, own = (mean([r["seconds"] for r in sel(k, s, bm3d_n[s])]) for k in (ref, m))
                row.append(f"{b / own:.0f}×" if b and own and not m.startswith("bm3d") else "–")
                if bm3d_n[s] < n_images[s]:
                    row.append(fmt(mean([r["psnr"] for r in sel(m, s, bm3d_n[s])]), ".2f"))
        rows.append(row)
    return md_table(header, rows)


def ensemble_gains(records, models: list[ModelMethod]) -> list[str]:
    """"x8 self-ensemble: +d dB" per model, set and sigma, image by image against the same model alone."""
    out = []
    for m in models:
        plain = next((p for p in models if not p.ensemble and p.folder == m.folder), None)
        if not m.ensemble or plain is None:
            continue
        own = {(r["set"], r["sigma"], r["image"]): r["psnr"] for r in records if r["method"] == plain.name}
        gains: dict[tuple, list[float]] = {}
        for r in records:
            key = (r["set"], r["sigma"], r["image"])
            if r["method"] == m.name and r["psnr"] is not None and own.get(key) is not None:
                gains.setdefault(key[:2], []).append(r["psnr"] - own[key])
        if gains:
            out.append(f"x8 self-ensemble gain, {plain.name}: " + ", ".join(
                f"{s}{'' if sg is None else f' σ{sg:g}'} {statistics.mean(g):+.2f} dB ({len(g)} images)"
                for (s, sg), g in gains.items()) + ".")
    return out


def compute_table(models: list[ModelMethod], ref_gflops: list[float]) -> str:
    ref = statistics.mean(ref_gflops)
    header = ["Model", "Params", "GFLOP / 481×321 img", "achieved GFLOP/s", "3×3-conv GFLOP/s (start, end)",
              "share", "train patches/s", "steps", "train s", "train device", "params (config)"]
    rows = []
    for m in models:
        params = sum(p.numel() for p in m.model.parameters())
        gflop = count_flops(m.model, torch.zeros(m.model.cfg.channels, *BSD_SHAPE[1:])) / 1e9
        achieved = m.flops / m.seconds / 1e9 if m.seconds else None
        cfg = json.loads((m.folder / "config.json").read_text())
        rows.append([m.name, f"{params:,}", f"{gflop:.2f}", fmt(achieved, ".1f"),
                     ", ".join(f"{g:.1f}" for g in ref_gflops), f"{achieved / ref:.0%}" if achieved else "–"]
                    + [str(cfg.get(k, "–")) for k in TRAIN_KEYS])
    return md_table(header, rows)


# ---------------------------------------------------------------- main

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="folder holding the sets (default: %(default)s)")
    ap.add_argument("--sets", default="set12,bsd68", help="comma-separated folder names under --data: clean "
                    "images (gray or colour, noised here) or real pairs (<scene>_real.png, <scene>_mean.png)")
    ap.add_argument("--sigmas", default="15,25,50", help="comma-separated noise levels, 0-255 scale")
    ap.add_argument("--models", default="", help="comma-separated shipped model names (see `aeflow models`) or "
                    "model folders, each named by its folder; a gray model denoises colour images per channel")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER", help="a model folder (repeatable)")
    ap.add_argument("--ensemble", action="store_true", help="also run every --models / --model entry with the x8 "
                    "flip/rotation self-ensemble (a row 'NAME x8' and its gain over NAME in the notes)")
    ap.add_argument("--ensemble-model", action="append", default=[], metavar="NAME=FOLDER",
                    help="a model folder run with the x8 flip/rotation self-ensemble (repeatable)")
    ap.add_argument("--limit", type=int, help="only the first N images of each set (quick trials)")
    ap.add_argument("--bm3d-limit", type=int, help="BM3D / CBM3D on the first N images of each set only "
                    "(~17 s per BSD68 image, ~25 s per 481x321 or 512x512 colour image per sigma)")
    ap.add_argument("--skip-bm3d", action="store_true", help="no BM3D / CBM3D rows")
    ap.add_argument("--cbm3d-grid", default=CBM3D_GRID, help="real pairs: fixed CBM3D sigmas (0-255) tried; the "
                    "best on the set is reported (default %(default)s)")
    ap.add_argument("--device", default="cpu", help="device for the models: cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output path; .json and .md are written "
                    "(default $AEFLOW_OUTPUTS or outputs/, then bench/denoise-<date>-<time>)")
    args = ap.parse_args(argv)

    sets, sigmas = args.sets.split(","), [float(s) for s in args.sigmas.split(",")]
    grid = [float(g) for g in args.cbm3d_grid.split(",") if g]
    device = torch.device(args.device)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    stamp = datetime.datetime.now()
    out = args.out or outputs_root() / "bench" / f"denoise-{stamp:%Y-%m-%d-%H%M%S}"
    out = out.with_suffix("") if out.suffix in (".json", ".md") else out   # foo.json -> foo.json + foo.md

    data = {}
    for s in sets:
        try:
            data[s] = read_set(args.data, s, args.limit)
        except (OSError, ValueError) as e:
            ap.error(str(e))
    gauss = [s for s in sets if data[s][0] == "gaussian"]
    real = [s for s in sets if data[s][0] == "real"]
    colour = {s for s in sets if data[s][1][0][1].ndim == 3}

    specs = []                            # (name, folder, ensemble)
    for spec in args.model:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            ap.error(f"--model {spec!r}: expected NAME=FOLDER, e.g. --model skip=outputs/train/skip_dae-...")
        specs.append((name, folder, False))
    for name in filter(None, args.models.split(",")):
        try:
            folder = resolve_model(name, channels=3, job="denoise")
        except FileNotFoundError as e:
            ap.error(f"--models: {e}")
        specs.append((Path(folder).name, str(folder), False))
    specs += [(n + " x8", f, True) for n, f, _ in specs] if args.ensemble else []
    for spec in args.ensemble_model:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            ap.error(f"--ensemble-model {spec!r}: expected NAME=FOLDER")
        specs.append((name, folder, True))
    names = [n for n, _, _ in specs]
    if len(set(names)) != len(names) or any(n in ("noisy", "nlm") or n.startswith("bm3d") for n in names):
        ap.error("model names must be unique and differ from noisy, nlm, bm3d*")
    models = [ModelMethod(n, f, device, e) for n, f, e in specs]

    # Each baseline needs only its own extra: a missing one drops its row and says what to install.
    left_out = [n for n in [missing_extra("cv2", "OpenCV NLM") if gauss else None,
                            None if args.skip_bm3d else missing_extra("bm3d", "BM3D / CBM3D")] if n]
    has_bm3d = not args.skip_bm3d and not any(n.startswith("BM3D") for n in left_out)
    no_est = missing_extra("pywt", "CBM3D with estimated σ") if has_bm3d and real else None
    left_out += [no_est] if no_est else []
    has_est = has_bm3d and bool(real) and not no_est
    for n in left_out:
        log(n)

    gauss_methods = {"noisy": None} | ({} if any(n.startswith("OpenCV") for n in left_out) else {"nlm": nlm})
    gauss_methods |= {m.name: m for m in models} | ({"bm3d": bm3d_method} if has_bm3d else {})
    fixed = {f"bm3d-s{g:g}": bm3d_fixed(g) for g in grid} if has_bm3d else {}
    real_methods = {"noisy": None} | {m.name: m for m in models} | ({"bm3d-est": bm3d_estimated} if has_est else {})
    real_methods |= fixed
    some = lambda ss: "all" if ss and all(s in colour for s in ss) else "some" if colour & set(ss) else ""
    labels = {"noisy": "noisy input (clipped, uint8)" if gauss else "noisy input",
              "nlm": "OpenCV NLM (uint8 input, h = 0.9σ)",
              "bm3d": "BM3D (profile np)" + ("; CBM3D (bm3d_rgb) on colour" if colour & set(gauss) else ""),
              "bm3d-est": "CBM3D, σ estimated per image (wavelet MAD, every 3rd pixel)",
              "bm3d-best": f"CBM3D, best fixed σ of {{{args.cbm3d_grid}}} (chosen on these images: flatters it)"}
    gauss_labels = labels | {m.name: m.label(some(gauss)) for m in models}
    real_labels = labels | {"noisy": "noisy input (the camera's file)"} | {m.name: m.label(some(real)) for m in models}

    ref_gflops = [conv_throughput(device)] if models else []
    load_start, records, n_images, bm3d_n, t_start = os.getloadavg(), [], {}, {}, time.perf_counter()
    refused = []

    def run(methods, s, sigma, cases):
        for m, fn in methods.items():
            why = fn.refuses(cases[0][1]) if isinstance(fn, ModelMethod) else None
            if why:
                refused.append(f"{m} not run on {s}: {why}.")
                continue
            t0, n = time.perf_counter(), 0
            for i, (name, y, u8) in enumerate(cases):
                if m.startswith("bm3d") and i >= bm3d_n[s]:
                    break
                x_hat, secs, info = (y, None, {}) if fn is None else fn(y, sigma)
                u8_hat = to_uint8(x_hat)
                records.append({"set": s, "sigma": sigma, "method": m, "image": name, "index": i,
                                "psnr": psnr(u8_hat, u8), "ssim": ssim(u8_hat, u8), "seconds": secs} | info)
                n += 1
            log(f"[{time.perf_counter() - t_start:7.1f} s] {s}{'' if sigma is None else f' σ{sigma:g}'} {m}: "
                f"{n} images in {time.perf_counter() - t0:.1f} s")

    for s in sets:
        kind, items = data[s]
        n_images[s] = len(items)
        bm3d_n[s] = min(len(items), args.bm3d_limit if args.bm3d_limit is not None else len(items))
        if kind == "gaussian":
            for sigma in sigmas:
                run(gauss_methods, s, sigma, [(name, add_noise(u8 / 255.0, sigma, args.seed, name), u8)
                                              for name, u8 in items])
        else:
            run(real_methods, s, None, [(scene, y / 255.0, x) for scene, y, x in items])
    if models:
        ref_gflops.append(conv_throughput(device))    # again at the end: background load drifts

    # Real pairs: the fixed sigma of the grid with the best mean PSNR on each set becomes the "best" row.
    best_notes = []
    for s in real if fixed else []:
        by_sigma = {g: mean([r["psnr"] for r in records if r["method"] == f"bm3d-s{g:g}" and r["set"] == s])
                    for g in grid}
        g_best = max(by_sigma, key=lambda g: by_sigma[g] or 0.0)
        records += [r | {"method": "bm3d-best", "fixed_sigma": g_best} for r in records
                    if r["method"] == f"bm3d-s{g_best:g}" and r["set"] == s]
        est = [r["sigma_est"] for r in records if r["method"] == "bm3d-est" and r["set"] == s]
        best_notes.append(f"{s}: CBM3D mean PSNR by fixed σ " + ", ".join(f"{g:g}: {fmt(v, '.2f')}" for g, v in
                          by_sigma.items()) + f"; best σ {g_best:g}" +
                          (f"; estimated σ {min(est):.1f}-{max(est):.1f} (mean {statistics.mean(est):.1f})"
                           if est else "") + ".")

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    where = (f"Models on {dev} with bf16 autocast; NLM and BM3D on the CPU ({cpu_name()})" if device.type == "cuda"
             else f"All methods on the CPU ({cpu_name()}; models with {torch.get_num_threads()} threads)")
    notes = ["Images: " + ", ".join(f"{s} {n_images[s]}" for s in sets) + f"; noise seed {args.seed}; "
             f"protocol shared/notes/denoise.md section 1 (noisy input not clipped, except NLM's).",
             f"{where}; torch {torch.__version__}; load average {load_start[0]:.1f} at start, "
             f"{os.getloadavg()[0]:.1f} at end.",
             "s/img: the denoiser call only, after a warm-up pass per image shape" +
             ("; (N× BM3D) = BM3D s/img over this method's, on the BM3D images." if has_bm3d and gauss else ".")]
    if has_bm3d and any(bm3d_n[s] < n_images[s] for s in sets):
        notes.append("BM3D ran on the first " + ", ".join(f"{bm3d_n[s]} of {s}" for s in sets) +
                     " images only; its PSNR/SSIM/s columns cover those, and the BM3D-subset column gives every "
                     "method's PSNR on the same images.")
    notes += left_out + refused + ensemble_gains(records, models)
    report = ""
    if gauss:
        report += ("### Synthetic Gaussian noise\n\n" if real else "") + results_table(
            records, list(gauss_methods), gauss_labels, gauss, sigmas, n_images, bm3d_n, colour) + "\n\n"
    if real:
        rows = [m for m in real_methods if m not in fixed] + (["bm3d-best"] if fixed else [])
        report += "### Real noise (noisy/clean pairs)\n\n" + real_table(
            records, rows, real_labels, real, n_images, bm3d_n) + "\n\n"
        notes += best_notes
        if fixed:
            notes.append("Real pairs: × faster than CBM3D = CBM3D (estimated σ) s/img over this method's, on the "
                         "same images (the issue's target for a model: at least 20×). The best fixed σ is "
                         "chosen on the test images themselves, an oracle no user has: it flatters CBM3D.")
    report += "\n".join(f"- {n}" for n in notes) + "\n"
    if models:
        report += "\n" + compute_table(models, ref_gflops) + "\n\n- share = achieved / mean 3×3-conv reference " \
                  "(Conv2d 64→64, (8, 64, 128, 128) channels_last, median of 5).\n"
    print(report)

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": stamp.isoformat(timespec="seconds"), "argv": sys.argv, "device": dev, "torch": torch.__version__,
            "n_images": n_images, "bm3d_images": bm3d_n if has_bm3d else None, "cbm3d_grid": grid if real else None,
            "conv_gflops": ref_gflops, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "models": {m.name: {"folder": str(m.folder), "label": m.label(), "timed_gflop": m.flops / 1e9,
                                "timed_seconds": m.seconds,
                                "flops_by_shape": {str(list(k)): v for k, v in m.flops_by_shape.items()}}
                       for m in models}}
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "table_md": report, "records": records}, indent=1))
    Path(f"{out}.md").write_text(report)
    log(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
