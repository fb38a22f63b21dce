"""Denoising benchmark (not a test): noisy input, OpenCV NLM, BM3D and trained models on Set12/BSD68.

Protocol: shared/notes/denoise.md, section 1 (DnCNN convention). x = u8/255; y = x + sigma/255 N(0, 1),
seeded by (seed, crc32(file name)), not clipped; outputs clipped to [0, 1] and rounded to uint8;
PSNR (peak 255) and SSIM on uint8. Prints a results table and a compute table (markdown) on stdout,
progress on stderr, and writes both plus per-image numbers to --out (.json and .md).

    .venv/bin/python bench/denoise.py --model skip=outputs/train/<folder> --bm3d-limit 12
    .venv/bin/python bench/denoise.py --limit 2 --sigmas 25 --bm3d-limit 1 --model m=<folder>   # trial
"""

from __future__ import annotations

import argparse
import datetime
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

from flows.demo import add_noise
from flows.denoise import psnr, ssim
from flows.settings import outputs_root
from models.inference import denoise_image
from models.registry import load_model

DATA = ROOT.parent / "shared" / "data" / "denoise"    # the note's ../shared beside the checkout
BSD_SHAPE = (1, 321, 481)             # (C, H, W) of a landscape BSD68 image, for GFLOP per image
TRAIN_KEYS = ("patches_per_s", "steps", "seconds", "device", "parameters")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def to_uint8(x01: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x01, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_set(data: Path, name: str, limit: int | None) -> list[tuple[str, np.ndarray]]:
    folder = data / name
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".tif", ".bmp", ".jpg"})
    if not files:
        raise FileNotFoundError(f"{folder}: no images; --sets takes folder names under --data ({data})")
    out = []
    for p in files[:limit]:
        with Image.open(p) as im:
            u8 = np.asarray(im.convert("L" if im.mode in ("L", "P", "1") else "RGB"))
        out.append((p.name, u8))
    return out


def cpu_name() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)    # kernels are asynchronous: the clock must wait for them


# ---------------------------------------------------------------- methods: y (H, W[, C]) float64 -> (x_hat, s)

def nlm(y: np.ndarray, sigma: float):
    import cv2
    u8 = to_uint8(y)                      # OpenCV NLM only takes uint8: clip + round first
    t0 = time.perf_counter()
    if u8.ndim == 2:
        out = cv2.fastNlMeansDenoising(u8, None, h=0.9 * sigma, templateWindowSize=7, searchWindowSize=21)
    else:
        out = cv2.fastNlMeansDenoisingColored(u8, None, 0.9 * sigma, 0.9 * sigma, 7, 21)
    return out / 255.0, time.perf_counter() - t0


def bm3d_method(y: np.ndarray, sigma: float):
    import bm3d                           # lazy: slow import, non-commercial licence, bench-only
    t0 = time.perf_counter()
    out = bm3d.bm3d(y, sigma_psd=sigma / 255.0, profile="np")
    return np.reshape(out, y.shape), time.perf_counter() - t0


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
        return out.numpy().transpose(1, 2, 0).reshape(y.shape), dt

    def label(self) -> str:
        s = self.model.cfg.sigma
        trained = f"σ{s:g}" if isinstance(s, (int, float)) else f"blind σ{s[0]:g}-{s[1]:g}"
        return f"{self.name} ({self.model.cfg.kind}, {trained}{', x8 self-ensemble' if self.ensemble else ''})"


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


def results_table(records, methods, labels, sets, sigmas, n_images, bm3d_n) -> str:
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
                    cell += f" ({b / own:.0f}× BM3D)" if b and own else ""
                row += [fmt(mean([r["psnr"] for r in rs]), ".2f"), fmt(mean([r["ssim"] for r in rs]), ".4f"), cell]
                if has_bm3d and bm3d_n[s] < n_images[s]:
                    row.append(fmt(mean([r["psnr"] for r in sel(m, s, sg, bm3d_n[s])]), ".2f"))
        rows.append(row)
    return md_table(header, rows)


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
    ap.add_argument("--sets", default="set12,bsd68", help="comma-separated folder names under --data")
    ap.add_argument("--sigmas", default="15,25,50", help="comma-separated noise levels, 0-255 scale")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER", help="a model folder (repeatable)")
    ap.add_argument("--ensemble-model", action="append", default=[], metavar="NAME=FOLDER",
                    help="a model folder run with the x8 flip/rotation self-ensemble (repeatable)")
    ap.add_argument("--limit", type=int, help="only the first N images of each set (quick trials)")
    ap.add_argument("--bm3d-limit", type=int, help="BM3D on the first N images of each set only (~17 s per image)")
    ap.add_argument("--skip-bm3d", action="store_true")
    ap.add_argument("--device", default="cpu", help="device for the models: cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output path; .json and .md are written "
                    "(default $AEFLOW_OUTPUTS or outputs/, then bench/denoise-<date>-<time>)")
    args = ap.parse_args(argv)

    sets, sigmas = args.sets.split(","), [float(s) for s in args.sigmas.split(",")]
    device = torch.device(args.device)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    stamp = datetime.datetime.now()
    out = args.out or outputs_root() / "bench" / f"denoise-{stamp:%Y-%m-%d-%H%M%S}"
    out = out.with_suffix("") if out.suffix in (".json", ".md") else out   # foo.json -> foo.json + foo.md

    models = []
    for spec, ensemble in [(s, False) for s in args.model] + [(s, True) for s in args.ensemble_model]:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            ap.error(f"--model {spec!r}: expected NAME=FOLDER, e.g. --model skip=outputs/train/skip_dae-...")
        models.append(ModelMethod(name, folder, device, ensemble))
    methods = {"noisy": None, "nlm": nlm} | {m.name: m for m in models}
    labels = {"noisy": "noisy input (clipped, uint8)", "nlm": "OpenCV NLM (uint8 input, h = 0.9σ)"}
    labels |= {m.name: m.label() for m in models}
    if not args.skip_bm3d:
        methods["bm3d"], labels["bm3d"] = bm3d_method, "BM3D (profile np)"
    if len(methods) != 2 + len(models) + (not args.skip_bm3d):
        ap.error("model names must be unique and differ from noisy, nlm, bm3d")

    ref_gflops = [conv_throughput(device)] if models else []
    load_start, records, n_images, bm3d_n, t_start = os.getloadavg(), [], {}, {}, time.perf_counter()
    for s in sets:
        images = read_set(args.data, s, args.limit)
        n_images[s] = len(images)
        bm3d_n[s] = min(len(images), args.bm3d_limit if args.bm3d_limit is not None else len(images))
        for sigma in sigmas:
            noisy = [add_noise(u8 / 255.0, sigma, args.seed, name) for name, u8 in images]
            for m, fn in methods.items():
                t0 = time.perf_counter()
                for i, ((name, u8), y) in enumerate(zip(images, noisy)):
                    if m == "bm3d" and i >= bm3d_n[s]:
                        break
                    x_hat, secs = (y, None) if fn is None else fn(y, sigma)
                    u8_hat = to_uint8(x_hat)
                    records.append({"set": s, "sigma": sigma, "method": m, "image": name, "index": i,
                                    "psnr": psnr(u8_hat, u8), "ssim": ssim(u8_hat, u8), "seconds": secs})
                log(f"[{time.perf_counter() - t_start:7.1f} s] {s} σ{sigma:g} {m}: "
                    f"{bm3d_n[s] if m == 'bm3d' else len(images)} images in {time.perf_counter() - t0:.1f} s")
    if models:
        ref_gflops.append(conv_throughput(device))    # again at the end: background load drifts

    table = results_table(records, list(methods), labels, sets, sigmas, n_images, bm3d_n)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    where = (f"Models on {dev} with bf16 autocast; NLM and BM3D on the CPU ({cpu_name()})" if device.type == "cuda"
             else f"All methods on the CPU ({cpu_name()}; models with {torch.get_num_threads()} threads)")
    notes = ["Images: " + ", ".join(f"{s} {n_images[s]}" for s in sets) + f"; noise seed {args.seed}; "
             f"protocol shared/notes/denoise.md section 1 (noisy input not clipped, except NLM's).",
             f"{where}; torch {torch.__version__}; load average {load_start[0]:.1f} at start, "
             f"{os.getloadavg()[0]:.1f} at end.",
             "s/img: the denoiser call only, after a warm-up pass per image shape" +
             ("; (N× BM3D) = BM3D s/img over this method's, on the BM3D images." if not args.skip_bm3d else ".")]
    if not args.skip_bm3d and any(bm3d_n[s] < n_images[s] for s in sets):
        notes.append("BM3D ran on the first " + ", ".join(f"{bm3d_n[s]} of {s}" for s in sets) +
                     " images only; its PSNR/SSIM/s columns cover those, and the BM3D-subset column gives every "
                     "method's PSNR on the same images.")
    report = table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if models:
        report += "\n" + compute_table(models, ref_gflops) + "\n\n- share = achieved / mean 3×3-conv reference " \
                  "(Conv2d 64→64, (8, 64, 128, 128) channels_last, median of 5).\n"
    print(report)

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": stamp.isoformat(timespec="seconds"), "argv": sys.argv, "device": dev, "torch": torch.__version__,
            "n_images": n_images, "bm3d_images": bm3d_n if not args.skip_bm3d else None,
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
