"""Copy trained model folders into models/pretrained/<name>/ as float16 (each file under 8 MB), with a
model card whose PSNR figures come from a bench/denoise.py run of the *shipped* (float16) weights.

    python bench/ship_pretrained.py skip-dae-gray=FOLDER skip-dae-color=FOLDER ...   # copy
    python bench/ship_pretrained.py --bench outputs/bench/X.json skip-dae-gray ...    # fill the cards
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from flows.catalog import PRETRAINED  # noqa: E402
from models.checkpoints import read_config, save_model  # noqa: E402
from models.registry import load_model  # noqa: E402

CARD = """# {name}

`{kind}` denoiser for {what} images, {sigma_text}.{level_text} Trained with the project's own
training stage (`bench/pretrain.py`, which prints the equivalent `aeflow denoise train` command; the older
gray models: `bench/pretrain.sh`) and shipped as float16 safetensors ({size_kb:.0f} kB, {params:,} parameters);
loading casts back to float32.{default_text}

- **Data**: {data}
- **Training**: {steps:,} steps of {batch} patches of {patch}x{patch} px, AdamW (peak lr {lr:g}, warm-up then
  cosine), {minutes:g} minutes on {device_text}; validation PSNR {val_psnr:.2f} dB on {val} held-out crops
  at {val_sigma}.
- **Noise**: {noise_text}{specific}

## Measured PSNR (dB), DnCNN protocol, these float16 weights on the CPU

{bench}

`bench/denoise.py` reproduces these figures (see the project README).
"""


DATA_NAMES = {"train400": "Train400 (DnCNN's 400 gray 180x180 BSDS crops, `../shared/data/denoise/train400`)",
              "cbsd432": "CBSD432 (the 432 BSDS500 colour photos not in CBSD68, light JPEG as distributed, "
                         "`../shared/data/denoise/cbsd432`; Corel photos for non-commercial research, as Train400)",
              "skimage-photos": "scikit-image's bundled photos (`BUNDLED_PHOTOS` in flows/ingest.py; gray ones "
                                "repeated into three channels)"}


def ship(name: str, src: Path) -> Path:
    dst = PRETRAINED / name
    if dst.exists():
        shutil.rmtree(dst)
    cfg = read_config(src)
    model = load_model(src)
    extra = {k: v for k, v in cfg.items() if k != "model"}
    extra["shipped_from"] = src.name
    save_model(model, dst, cfg["model"], dtype=torch.float16, extra=extra)
    shutil.copy(src / "curve.png", dst / "curve.png")
    return dst


REFERENCES = {"bm3d": "BM3D / CBM3D (true sigma), same run", "bm3d-est": "CBM3D, sigma estimated per image, same run",
              "bm3d-best": "CBM3D, best fixed sigma chosen on these images, same run", "noisy": "noisy input"}


def bench_table(name: str, bench: Path) -> str:
    """Mean PSNR of the model and the same run's references, per set (and sigma), from a bench/denoise.py JSON.
    Where a reference ran on fewer images (BM3D is slow), a row gives the model on those same images too."""
    data = json.loads(bench.read_text())
    cells: dict[tuple, dict[str, float]] = {}
    for r in data["records"]:
        if r["method"] in (name, *REFERENCES) and r.get("psnr") is not None:
            cells.setdefault((r["method"], r["set"], r.get("sigma")), {})[r["image"]] = r["psnr"]
    keys = sorted({(s, g) for m, s, g in cells if m == name}, key=lambda k: (k[0], k[1] or 0))
    if not keys:
        return ""
    subset = {k: cells[("bm3d", *k)].keys() for k in keys
              if ("bm3d", *k) in cells and len(cells[("bm3d", *k)]) < len(cells[(name, *k)])}
    rows = [(name, "this model", None)]
    if subset:
        rows.append((name, "this model, on the images BM3D ran on", subset))
    rows += [(m, label, None) for m, label in REFERENCES.items()]
    lines = ["| method | " + " | ".join(f"{s} sigma {g:g}" if g is not None else f"{s} (real noise)" for s, g in keys)
             + " |", "|---|" + "---:|" * len(keys)]
    for method, label, only in rows:
        row = []
        for k in keys:
            got = cells.get((method, *k), {})
            vals = [v for img, v in got.items() if only is None or img in only.get(k, ())]
            row.append(f"{statistics.mean(vals):.2f} ({len(vals)})" if vals else "-")
        if any(c != "-" for c in row):
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    return ("\n".join(lines) + "\n\nMean dB (images). Reproduce: `.venv/bin/python bench/denoise.py "
            + " ".join(data["meta"].get("argv", [])[1:]) + "` (`make bench-deps` first).")


def sigma_text_of(sigma) -> str:
    return f"blind over sigma in [{sigma[0]:g}, {sigma[1]:g}]" if isinstance(sigma, list) else f"sigma = {sigma:g}"


def card(name: str, bench: Path | None) -> None:
    folder = PRETRAINED / name
    cfg = read_config(folder)
    m, t = cfg["model"], cfg["train"]
    sigma = m["sigma"]
    blind = isinstance(sigma, list)
    table = "(not measured yet)"
    if bench:
        table = "\n\n".join(t for t in (bench_table(name, b) for b in bench) if t)
    else:
        old = (folder / "MODEL_CARD.md").read_text() if (folder / "MODEL_CARD.md").exists() else ""
        if "## Measured PSNR" in old:          # re-rendering the text keeps the figures measured before
            table = old.split("## Measured PSNR", 1)[1].split("\n", 2)[2].rsplit("\n`bench/denoise.py` reproduces", 1)[0].strip()
    data = cfg["data"]
    slug = Path(data["ingest"]).name.rsplit("-", 1)[0]
    text = CARD.format(
        name=name, kind=m["kind"], what="colour" if m["channels"] == 3 else "grayscale",
        sigma_text="trained on camera noise" if m.get("noise") == "camera" else sigma_text_of(sigma),
        size_kb=(folder / "model.safetensors").stat().st_size / 1024, params=cfg["parameters"],
        data=f"{DATA_NAMES.get(slug, slug)} ({data['train_images']} training images, {data['val_images']} held out)",
        steps=cfg["steps"], batch=t["batch_size"], patch=t["patch"], lr=t["lr"], minutes=t["minutes"] or 0,
        device_text="one NVIDIA H200 (bf16 autocast)" if cfg["device"] == "cuda" else "the CPU",
        val_psnr=cfg["metrics"]["val_psnr"], val=data["val_images"], val_sigma="camera noise" if m.get("noise") == "camera" else "sigma 25" if blind else f"sigma {sigma:g}",
        level_text=" It takes the noise level as a second input (a noise-level map, FFDNet style) and estimates it "
                   "itself when none is given: `denoise run --strength` scales it." if m.get("noise_map") else "",
        default_text={"skip-dae-camera": " The default of `aeflow denoise run` for colour photos.",
                      "skip-dae-camera-gray": " The default of `aeflow denoise run` for gray images (scans)."}.get(name, ""),
        noise_text=("a camera's pipeline (`models/degrade.py`): inverse tone curve and gamma, colour correction and "
                    "white balance (Brooks et al., CVPR 2019), Poisson-Gaussian sensor noise at random gains, Bayer "
                    "demosaic of the noise, 8-bit levels, JPEG at quality 60-95 (60 % of draws); 20 % of draws plain "
                    "white Gaussian, sigma 0-50." if m.get("noise") == "camera"
                    else f"additive white Gaussian, {sigma_text_of(sigma)} on the 0-255 scale."),
        bench=table, specific="" if blind or m.get("noise") == "camera" else (
            f" Use it only near sigma {sigma:g}: elsewhere the blind model is better (see the table); "
            f"`aeflow denoise run --sigma {sigma:g}` picks it."))
    (folder / "MODEL_CARD.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=FOLDER to copy, or NAME to (re)write the card")
    ap.add_argument("--bench", type=Path, action="append", help="bench/denoise.py JSON with rows named after the "
                    "shipped models (repeatable: one table each)")
    args = ap.parse_args()
    for item in args.models:
        name, _, src = item.partition("=")
        if src:
            print("shipped", ship(name, Path(src)))
        card(name, args.bench)


if __name__ == "__main__":
    main()
