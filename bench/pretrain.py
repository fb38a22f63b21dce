"""How the shipped denoisers are trained: the project's own training stage (`flows.train.train_model`, what
`aeflow denoise train` runs inside its flow), several recipes side by side on one GPU. Each recipe prints the
`aeflow denoise train` command that gives the same stage key. Then bench/ship_pretrained.py copies the chosen
model folders into models/pretrained/ as float16 with a model card.

    python bench/pretrain.py --data DIR --minutes 7.5 [--recipes a,b] [--root outputs/pretrain]

DIR holds the training sets by name (cbsd432/, train400/: copies of ../shared/data/denoise/). Prefect is not
needed (the GPU machine has none): the stages are the same, so the printed commands hit the cached models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = {"batch_size": 128, "patch": 96, "epoch_steps": 500, "lr": 2e-3}
WIDE = {"widths": [56, 112, 224], "blocks": [2, 2, 2]}          # 3.2 M parameters: 6.4 MB in float16
RECIPES = {
    # name: (training set, model config)
    "color-map": ("cbsd432", {"kind": "skip_dae", "channels": 3, "sigma": [0, 55], "noise_map": True, **WIDE}),
    "camera-color": ("cbsd432", {"kind": "skip_dae", "channels": 3, "sigma": [0, 55], "noise": "camera",
                                 "noise_map": True, **WIDE}),
    "camera-gray": ("cbsd432", {"kind": "skip_dae", "channels": 1, "sigma": [0, 55], "noise": "camera",
                                "noise_map": True, **WIDE}),
    "gray-map": ("train400", {"kind": "skip_dae", "channels": 1, "sigma": [0, 55], "noise_map": True, **WIDE}),
    "gray-s25-wide": ("train400", {"kind": "skip_dae", "channels": 1, "sigma": 25, **WIDE}),
}
# fine-tuning: (training set, starting model shipped in models/pretrained, peak learning rate)
FINE_TUNES = {"camera-color-more": ("cbsd432", "skip-dae-camera", 5e-4)}


def command(data: Path, model: dict, minutes: float, init: Path | None = None, lr: float = COMMON["lr"]) -> str:
    """The `aeflow denoise train` command that builds the same stages."""
    m = model
    sigma = m["sigma"] if not isinstance(m["sigma"], list) else f"{m['sigma'][0]}-{m['sigma'][1]}"
    parts = [f"aeflow denoise train --data {data} --model {m['kind']} --sigma {sigma} --channels {m['channels']}",
             f"--widths {','.join(map(str, m['widths']))} --blocks {','.join(map(str, m['blocks']))}"]
    if m.get("noise", "gaussian") != "gaussian":
        parts.append(f"--noise {m['noise']}")
    if m.get("noise_map"):
        parts.append("--noise-map")
    if init:
        parts.append(f"--init {init.name}")
    parts.append(f"--minutes {minutes:g} --batch-size {COMMON['batch_size']} --patch {COMMON['patch']} "
                 f"--epoch-steps {COMMON['epoch_steps']} --lr {lr:g}")
    return " ".join(parts)


def train_one(name: str, data: Path, minutes: float, steps: int | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.backends.cudnn.benchmark = True
    from flows.ingest import ingest_images
    from flows.train import train_model

    from flows.catalog import PRETRAINED

    init, lr = None, COMMON["lr"]
    if name in FINE_TUNES:
        folder, start, lr = FINE_TUNES[name]
        init = PRETRAINED / start
        model = json.loads((init / "config.json").read_text())["model"]
    else:
        folder, model = RECIPES[name]
    ingest = ingest_images(str(data / folder))
    training = {"minutes": minutes, **COMMON, "lr": lr} if not steps else {"steps": steps, "epoch_steps": steps, "batch_size": 4, "patch": 48}
    trained = train_model(ingest, model, training, progress=False, init=str(init) if init else None)
    cfg = trained.manifest
    print(json.dumps({"recipe": name, "folder": str(trained.folder), "steps": cfg["steps"], "seconds": cfg["seconds"],
                      "patches_per_s": cfg["patches_per_s"], "metrics": cfg["metrics"],
                      "parameters": cfg["parameters"], "command": command(data / folder, model, minutes, init, lr)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=7.5)
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"of {', '.join([*RECIPES, *FINE_TUNES])}")
    ap.add_argument("--root", type=Path, default=ROOT / "outputs" / "pretrain")
    ap.add_argument("--steps", type=int, help="a tiny smoke run of N steps (batch 4, 48 px) instead of --minutes")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return train_one(args.one, args.data.resolve(), args.minutes, args.steps)
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES and n not in FINE_TUNES]
    if unknown:
        sys.exit(f"unknown recipe(s) {unknown}; known: {', '.join([*RECIPES, *FINE_TUNES])}")
    args.root.mkdir(parents=True, exist_ok=True)
    t0, procs = time.time(), {}
    for n in names:   # one process each, one output root each: they share the GPU, not their caches
        env = {**os.environ, "AEFLOW_OUTPUTS": str(args.root / n), "PYTHONUNBUFFERED": "1"}
        log = open(args.root / f"{n}.log", "w")
        procs[n] = subprocess.Popen([sys.executable, __file__, "--data", str(args.data), "--minutes", str(args.minutes),
                                     "--one", n, *(["--steps", str(args.steps)] if args.steps else [])], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    failed = [n for n, p in procs.items() if p.wait() != 0]
    print(f"{len(names)} recipes in {time.time() - t0:.0f} s; failed: {failed or 'none'}")
    for n in names:
        print((args.root / f"{n}.log").read_text().strip().splitlines()[-1] if (args.root / f"{n}.log").stat().st_size else f"{n}: no output")


if __name__ == "__main__":
    main()
