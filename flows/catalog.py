"""Which models exist (shipped with the package, or trained under outputs/train/) and which one a
`--model` argument names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import models
from flows.settings import outputs_root

PRETRAINED = Path(models.__file__).parent / "pretrained"
JOBS = ("denoise", "levels", "music", "family")      # what a model's config records as data.job (flows/train.py)


def shipped_models() -> list[Path]:
    return sorted(p.parent for p in PRETRAINED.glob("*/config.json"))


def trained_models() -> list[Path]:
    return sorted(p.parent for p in (outputs_root() / "train").glob("*/manifest.json"))


def weights_key(folder: Path) -> str:
    """Content key of a model: the sha256 of its weights (from the sidecar, checked again at load)."""
    return (Path(folder) / "model.safetensors.sha256").read_text().strip()


def describe(folder: Path) -> dict:
    """One line of `aeflow models`: its job, what the model takes and its headline validation figure."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    m, metrics, job = cfg["model"], cfg.get("metrics", {}), job_of(cfg)
    sigma = m.get("sigma")
    sigma = f"{sigma[0]:g}-{sigma[1]:g}" if isinstance(sigma, list) else "-" if sigma is None else f"{sigma:g}"
    if job in ("levels", "music"):    # a token-grid VAE: grid shape x vocabulary, conditions, reconstruction accuracy
        data = cfg.get("data", {})
        tokens = f"{len(m['columns'])} column tokens" if m.get("columns") else f"{m['vocab']} tokens"
        cond = data.get("cond") or ([data["condition"]] if data.get("condition", "none") != "none" else m.get("cond"))
        takes = f"{m['shape'][0]}x{m['shape'][1]} grid, {tokens}" + (f", cond {', '.join(map(str, cond))}"
                                                                     if cond else "")
        val = f"acc {metrics['val_acc']:.3f}" if "val_acc" in metrics else ""
    elif job == "family":             # an autoencoder-family model (flows/family.py)
        takes = (f"{'x'.join(map(str, m['shape']))} {cfg['data'].get('data', '')}, z={m['latent']}"
                 + (f", beta {m['beta']:g}" if m.get("beta", 1) != 1 else ""))
        val = f"mse {metrics['val_mse']:.4f}" if "val_mse" in metrics else ""
    else:
        noise = "camera noise" if m.get("noise") == "camera" else f"sigma {sigma}"
        takes = f"{'gray' if m.get('channels') == 1 else 'colour'}, {noise}" + (", level input" if m.get("noise_map") else "")
        val = f"{metrics['val_psnr']:.2f} dB" if "val_psnr" in metrics else ""
    return {"name": Path(folder).name, "job": job, "kind": m["kind"], "channels": m.get("channels"), "sigma": sigma,
            "takes": takes, "validation": val, "parameters": cfg.get("parameters"),
            "val_psnr": metrics.get("val_psnr"), "steps": cfg.get("steps"),
            "source": "shipped" if Path(folder).parent == PRETRAINED else "trained", "path": str(folder)}


def family(folder: Path) -> str:
    """Which job a model serves (see job_of), from its config.json; "unknown" when that cannot be read."""
    try:
        return job_of(json.loads((Path(folder) / "config.json").read_text()))
    except (OSError, ValueError, AttributeError):
        return "unknown"


def job_of(config: dict) -> str:
    """The job a model's config records (data.job: the shipped models and every model trained since the field
    was added); a folder trained before is told by its data instead: a game is levels, a music mode is music,
    else a denoiser (family models recorded theirs from the start)."""
    data = config.get("data", {})
    return data.get("job") or ("levels" if "game" in data else "music" if "mode" in data else "denoise")


NOISES = ("auto", "camera", "gaussian")


def resolve_model(name: str, channels: int, sigma: float | None = None, job: str | None = None,
                  noise: str = "auto") -> Path:
    """`auto` -> the shipped model for this many channels: for real photos and scans (camera noise) unless
    `noise` is "gaussian" or a `sigma` is given, then the white-Gaussian one (sigma-specific when one matches
    `sigma`, blind otherwise); a folder path; a shipped name; or a unique prefix of a shipped or trained model's
    folder name (of the `job`'s: "denoise", "levels", "music" or "family", when given)."""
    if noise not in NOISES:
        raise ValueError(f"--noise {noise!r}: one of {', '.join(NOISES)}")
    if name == "auto":
        color = "color" if channels == 3 else "gray"
        camera = "skip-dae-camera" if channels == 3 else "skip-dae-camera-gray"
        gaussian = ([f"skip-dae-{color}-s{sigma:g}"] if sigma is not None else []) + [f"skip-dae-{color}"]
        candidates = [camera] if noise == "camera" else gaussian if noise == "gaussian" or sigma is not None \
            else [camera] + gaussian
        for c in candidates:
            if (PRETRAINED / c / "config.json").is_file():
                return PRETRAINED / c
        raise FileNotFoundError(f"no shipped {color} model ({' or '.join(candidates)}) in {PRETRAINED}; train one "
                                "with `aeflow denoise train` and pass it with --model")
    if Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{name}: not a model folder (no config.json)")
        return folder
    for folder in shipped_models():
        if folder.name == name:
            return folder
    models = [f for f in shipped_models() + trained_models() if job is None or family(f) == job]
    named = [f for f in models if re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}", f.name)]
    if len(named) == 1:                   # the name itself, even when it prefixes other models' names
        return named[0]
    matches = [f for f in models if f.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    what = ("is ambiguous (give more of the name; `denoise train --name` names a model)" if matches
            else "matches no model")
    raise FileNotFoundError(f"model {name!r} {what}; known {job + ' ' if job else ''}models: "
                            f"{', '.join(f.name for f in models) or 'none'} (or give a model folder path)")
