"""Data-parallel training against one process (issue 21's targets; not a test).

For each job, the same command three times, each in a fresh outputs/ (nothing cached): one process, `--nproc 2`,
and one process with another seed (how far two runs that differ only in their random draws end apart, for
scale). Printed: steps and samples seen, the final validation metric and its difference from the one-process
run (targets: within 0.1 dB for the denoiser, 1 % for the others), training seconds and the speed-up.

Each rank of a group draws its own noise (models/trainer.py), so a group matches one process statistically;
the seed row shows the size of that chance. Every process runs one thread (OMP_NUM_THREADS=1), so the speed-up
is that of adding a process, and a shared machine's other load does not make two threads thrash.

    .venv/bin/python bench/ddp.py [--jobs denoise,family,levels] [--photos ../shared/data/denoise/cbsd432]
                                  [--steps 600] [--level-steps 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "denoise" / "cbsd432"


def jobs(photos: Path, steps: int, level_steps: int) -> dict[str, tuple[list[str], str, str]]:
    """name -> (command, metric in config.json's metrics, how it compares: dB or %)."""
    return {
        "denoise": (["denoise", "train", "--data", str(photos), "--steps", str(steps), "--epoch-steps", "100",
                     "--batch-size", "16", "--patch", "64", "--sigma", "0-55"], "val_psnr", "dB"),
        "family": (["family", "train", "--kind", "vae", "--latent", "8"], "val_loss", "%"),
        "levels": (["levels", "train", "--steps", str(level_steps), "--batch-size", "64"], "val_loss", "%"),
    }


def train(command: list[str], nproc: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="aeflow-ddp-") as outputs:
        env = {**os.environ, "AEFLOW_OUTPUTS": outputs, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "flows.cli", *command, "--nproc", str(nproc), "--seed", str(seed)],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if run.returncode:
            sys.exit(f"{' '.join(command)} --nproc {nproc}: exit {run.returncode}\n{run.stderr[-2000:]}")
        (config,) = [json.loads(p.read_text()) for p in Path(outputs, "train").glob("*/config.json")]
    return {**config, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default="denoise,family,levels")
    ap.add_argument("--photos", type=Path, default=PHOTOS, help="clean training photos for the denoise job")
    ap.add_argument("--steps", type=int, default=600, help="the denoise job's steps")
    ap.add_argument("--level-steps", type=int, default=1500, help="the levels job's steps")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "ddp.md")
    args = ap.parse_args()
    table = ["| job | run | steps | samples seen | final metric | vs 1 process | train s | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in args.jobs.split(","):
        if name == "denoise" and not args.photos.is_dir():
            print(f"denoise skipped: {args.photos} is absent")
            continue
        command, metric, unit = jobs(args.photos, args.steps, args.level_steps)[name]
        runs = {"1 process": train(command, 1, 0), "2 processes": train(command, 2, 0),
                "1 process, seed 1": train(command, 1, 1)}
        base = runs["1 process"]
        for label, r in runs.items():
            value, ref = r["metrics"][metric], base["metrics"][metric]
            diff = f"{value - ref:+.3f} dB" if unit == "dB" else f"{100 * (value - ref) / abs(ref):+.2f} %"
            seen = r["steps"] * r["train"]["batch_size"]
            table.append(f"| {name} ({metric}) | {label} | {r['steps']} | {seen:,} | {value:.4f} | "
                         f"{diff if r is not base else '–'} | {r['seconds']:.1f} | "
                         f"{base['seconds'] / r['seconds']:.2f}x |")
        print("\n".join(table[-3:]), flush=True)
    text = "\n".join(table)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
