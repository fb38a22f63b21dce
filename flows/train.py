"""Train stage: an ingest stage + model and training configs -> a model folder under outputs/train/.

The folder holds the weights (safetensors + sha256), the completed config with data, metrics and
history (config.json) and a loss/PSNR curve (curve.png). A killed run resumes from the checkpoints in
the stage's work folder when the same command is run again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from flows.ingest import load_ingested
from flows.progress import TrainProgress
from flows.stages import Stage, run_stage
from models.autoencoders import count_parameters
from models.checkpoints import WEIGHTS, load_state, save_model, sha256_file
from models.patches import PatchSampler, center_crops
from models.registry import build, parse_config
from models.trainer import TrainConfig, pick_device, train as train_loop

VERSION = 2  # 2: time budgets re-estimated over the first half of the run
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)   # ITU-R BT.601, for colour data into a gray model


def _to_channels(img: np.ndarray, channels: int) -> torch.Tensor:
    """(H, W, C) array -> (channels, H, W) tensor: gray images repeat into colour, colour turns to luma."""
    if img.shape[2] != channels:
        img = np.repeat(img, 3, axis=2) if channels == 3 else (img @ LUMA)[..., None]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def split_holdout(entries: list[dict], fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split by content hash (the same images are held out wherever the
    folder lives). One image in 1/fraction is held out, at least one when there are two or more."""
    order = sorted(range(len(entries)), key=lambda i: entries[i]["sha256"])
    if len(order) < 2:
        return order, order                  # a single image: validate on it (said in the manifest)
    n_val = max(1, round(len(order) * fraction))
    return order[n_val:], order[:n_val]


def train_model(ingest_dir: str, model: dict, training: dict, val_fraction: float = 0.05,
                refresh: bool = False, progress: bool = True, init: str | None = None) -> str:
    """Train (or find cached) a model on an ingest stage; returns the model folder.

    init: a model folder whose weights start the run (fine-tuning); its weights' sha256 joins the stage key.
    """
    upstream = json.loads((Path(ingest_dir) / "manifest.json").read_text())
    entries, images = load_ingested(ingest_dir)
    model_cfg = dict(model)
    model_cfg.setdefault("channels", 3 if any(e["shape"][2] == 3 for e in entries) else 1)
    model_cfg = parse_config(model_cfg)                    # completed, validated once
    train_cfg = TrainConfig(**training)
    config = {"model": model_cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
              "val_fraction": val_fraction}
    if init:
        config["init"] = {"model": Path(init).name, "weights_sha256": sha256_file(Path(init) / WEIGHTS)}
    stage = Stage("train", VERSION, f"{model_cfg.kind}-{upstream['slug']}", config, upstream=(upstream["key"],))

    def fill(tmp: Path) -> dict:
        device = pick_device(train_cfg.device)
        tensors = [_to_channels(img, model_cfg.channels) for img in images]
        train_idx, val_idx = split_holdout(entries, val_fraction)
        val_imgs = [tensors[i] for i in val_idx]
        val_size = max(8, min(128, *(min(t.shape[-2:]) for t in val_imgs)) // 8 * 8)
        torch.manual_seed(train_cfg.seed)                    # deterministic initial weights
        net = build(model_cfg)
        if init:
            try:
                net.load_state_dict({k: v.float() for k, v in load_state(Path(init)).items()})
            except RuntimeError as e:
                raise ValueError(f"--init {init}: its weights do not fit {model_cfg}: "
                                 f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
        net = net.to(device)
        sampler = PatchSampler([tensors[i] for i in train_idx], train_cfg.patch, train_cfg.batch_size, device)
        with TrainProgress(f"train {stage.folder.name}", enabled=progress) as bar:
            result = train_loop(net, sampler, center_crops(val_imgs, val_size), train_cfg, stage.workdir / "ckpt",
                           on_step=bar.update)
        metrics = {f"val_{k}": round(v, 4) for k, v in result.best.items()}
        info = {"metrics": metrics, "steps": result.steps, "seconds": result.seconds,
                "patches_per_s": result.samples_per_s, "resumed_from_step": result.resumed_from,
                "parameters": count_parameters(net), "device": device.type,
                "data": {"ingest": ingest_dir, "train_images": len(train_idx), "val_images": len(val_idx),
                         "val_crop": val_size, "source": upstream.get("source")}}
        save_model(net, tmp, config["model"], extra={"train": config["train"], "history": result.history, **info})
        plot_curve(result.history, tmp / "curve.png", title=stage.folder.name)
        return info

    folder, _, _ = run_stage(stage, fill, refresh)
    return str(folder)


def train_windows(slug: str, upstream: tuple[str, ...], data: dict, train: tuple[np.ndarray, np.ndarray | None],
                  val: tuple[np.ndarray, np.ndarray | None], model: dict, training: dict,
                  refresh: bool = False, progress: bool = True, facts: dict | None = None) -> str:
    """Train (or find cached) a token-grid model (`vae`, `cvae`) on windows; returns the model folder.

    train, val: (x (N, rows, cols) integer tokens, cond (N, K) integers or None). `data` describes the slice
    (game, split, ...); the stage key also hashes the arrays themselves, so it is content-addressed.
    `model` may leave out `shape` (taken from x), `vocab` (max token + 1) and a cvae's `cond` (max + 1 each).
    `facts` (derived from the arrays, so not hashed) are recorded beside `data` in the model's config.
    Validation keeps the weights with the best ELBO unless `training` names another `select`.
    """
    (x_tr, c_tr), (x_va, c_va) = train, val
    model_cfg = {"shape": list(x_tr.shape[1:]), "vocab": int(max(x_tr.max(), x_va.max())) + 1, **model}
    if model_cfg.get("kind") == "cvae" and "cond" not in model_cfg:
        model_cfg["cond"] = [int(v) + 1 for v in np.maximum(c_tr.max(0), c_va.max(0))]
    model_cfg = parse_config(model_cfg)
    train_cfg = TrainConfig(**{"select": "elbo", **training})
    config = {"model": model_cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"), "data": data}
    arrays = [a for a in (x_tr, c_tr, x_va, c_va) if a is not None]
    contents = tuple(hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest() for a in arrays)
    stage = Stage("train", VERSION, f"{model_cfg.kind}-{slug}", config, upstream=tuple(upstream), contents=contents)

    def fill(tmp: Path) -> dict:
        device = pick_device(train_cfg.device)
        tensor = lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device)
        x, c, vx, vc = tensor(x_tr), tensor(c_tr), tensor(x_va), tensor(c_va)
        conditional = model_cfg.kind == "cvae"

        def batches(gen: torch.Generator):
            idx = torch.randint(len(x), (train_cfg.batch_size,), generator=gen, device=device)
            return (x[idx], c[idx]) if conditional else x[idx]

        torch.manual_seed(train_cfg.seed)
        net = build(model_cfg).to(device)
        with TrainProgress(f"train {stage.folder.name}", enabled=progress) as bar:
            result = train_loop(net, batches, (vx, vc) if conditional else vx, train_cfg, stage.workdir / "ckpt",
                                on_step=bar.update)
        info = {"metrics": {f"val_{k}": round(v, 4) for k, v in result.best.items()}, "steps": result.steps,
                "seconds": result.seconds, "windows_per_s": result.samples_per_s,
                "resumed_from_step": result.resumed_from, "parameters": count_parameters(net),
                "device": device.type, "data": {**data, **(facts or {}), "train_windows": len(x_tr), "val_windows": len(x_va)}}
        save_model(net, tmp, config["model"], extra={"train": config["train"], "history": result.history, **info})
        plot_curve(result.history, tmp / "curve.png", title=stage.folder.name, metric=train_cfg.select)
        return info

    folder, _, _ = run_stage(stage, fill, refresh)
    return str(folder)


def plot_curve(history: list[dict], path: Path, title: str, metric: str = "psnr") -> None:
    """Training loss and a validation metric (PSNR for denoisers, ELBO for VAEs) against steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    a.plot(steps, [h["train_loss"] for h in history], label="train")
    a.plot(steps, [h["val_loss"] for h in history], label="validation")
    a.set(xlabel="step", ylabel="MSE" if metric == "psnr" else "loss", yscale="log" if metric == "psnr" else "linear",
          title="loss")
    a.legend()
    b.plot(steps, [h[f"val_{metric}"] for h in history], color="tab:green")
    b.set(xlabel="step", ylabel="dB" if metric == "psnr" else metric, title=f"validation {metric}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
