"""Train stage: an ingest stage + model and training configs -> a model folder under outputs/train/.

The folder holds the weights (safetensors + sha256), the completed config with data, metrics and
history (config.json) and a loss/PSNR curve (curve.png). A killed run resumes from the checkpoints in
the stage's work folder when the same command is run again (`--refresh` discards them and starts clean).

A model may be given a name (`--name`): it replaces the slug in the folder's name, `<name>-<key12>`, so the
key still says what the folder holds. A name belongs to one key: another config or data under a name in use
is refused; a key already trained under another name is copied, not trained again.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flows.ingest import load_ingested
from flows.progress import TrainProgress
from flows.stages import MANIFEST, Stage, StageResult, open_stage, read_manifest, run_stage, slugify
from models.checkpoints import WEIGHTS, load_state, read_config, save_model, sha256_file

# torch and the model modules are imported in the functions that train: importing this module (every
# command imports flows.pipelines) costs no torch, so a command with nothing to do answers without it
if TYPE_CHECKING:
    import torch

VERSION = 3  # 2: time budgets re-estimated over the first half of the run; 3: budgets checked every step,
             # checkpoints carry SHA256SUMS (a new key also leaves a killed older run's checkpoints behind)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)   # ITU-R BT.601, for colour data into a gray model


def _to_channels(img: np.ndarray, channels: int) -> torch.Tensor:
    """(H, W, C) array -> (channels, H, W) tensor: gray images repeat into colour, colour turns to luma."""
    import torch

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


def train_model(ingest_dir: StageResult | str, model: dict, training: dict, val_fraction: float = 0.05,
                refresh: bool = False, progress: bool = True, init: str | None = None, name: str | None = None,
                adapt: dict | None = None) -> StageResult:
    """Train (or find cached) a denoiser on an ingest stage (its result, or its folder).

    init: a model folder whose weights start the run (fine-tuning); its weights' sha256 joins the stage key.
    name: the folder's name instead of `<kind>-<data>` (see the module's docstring).
    adapt: {"pd": 2, "gamma": 2.0}: the images are noisy and there is no clean one; train by the
    self-supervised Neighbor2Neighbor loss (models/selfsup.py), validated by its held-out loss.
    """
    from models import distributed
    from models.autoencoders import count_parameters
    from models.registry import parse_config
    from models.trainer import TrainConfig

    ingest = open_stage(ingest_dir)
    upstream = ingest.manifest
    entries = upstream["images"]
    model_cfg = dict(model)
    model_cfg.setdefault("channels", 3 if any(e["shape"][2] == 3 for e in entries) else 1)
    model_cfg = parse_config(model_cfg)                    # completed, validated once
    train_cfg = TrainConfig(**training)
    config = {"model": model_cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
              "val_fraction": val_fraction}
    if init:
        config["init"] = {"model": Path(init).name, "weights_sha256": sha256_file(Path(init) / WEIGHTS)}
    if adapt is not None:
        config["adapt"] = {"loss": "neighbor2neighbor", "pd": 2, "gamma": 2.0, **adapt}
    slug = name or f"{model_cfg.kind}-{'adapt-' if adapt is not None else ''}{upstream['slug']}"
    stage = Stage("train", VERSION, slug, config, upstream=(upstream["key"],))

    def fill(tmp: Path) -> dict:
        with TrainProgress(f"train {stage.folder.name}", enabled=progress) as bar:
            warnings = _collect(bar.warn)
            (net, _, _, _, facts), result = distributed.run(
                denoiser_parts, (ingest, model_cfg, train_cfg, val_fraction, init, config.get("adapt")), train_cfg,
                stage.workdir / "ckpt", on_step=bar.update, warn=warnings)
        metrics = {f"val_{k}": round(v, 4) for k, v in result.best.items()}
        info = {"metrics": metrics, "steps": result.steps, "seconds": result.seconds,
                "patches_per_s": result.samples_per_s, "resumed_from_step": result.resumed_from,
                **({"warnings": warnings.said} if warnings.said else {}),
                "parameters": count_parameters(net), "device": facts["device"], **_group(),
                "data": {"job": "denoise", "ingest": str(ingest.folder), "train_images": facts["train_images"],
                         "val_images": facts["val_images"], "val_crop": facts["val_crop"], "source": upstream.get("source")}}
        extra = {k: config[k] for k in ("init", "adapt") if k in config}
        save_model(net, tmp, config["model"], extra={"train": config["train"], "history": result.history, **extra, **info})
        plot_curve(result.history, tmp / "curve.png", title=stage.folder.name, metric=train_cfg.select)
        return info

    return run_train_stage(stage, fill, refresh, named=bool(name))


def denoiser_parts(ingest: StageResult, model_cfg, train_cfg, val_fraction: float, init: str | None,
                   adapt: dict | None) -> tuple:
    """What each rank builds to train a denoiser: (net, learner, batches, val, facts). The learner is the net, or
    for `adapt` the net inside the self-supervised Neighbor2Neighbor loss."""
    import torch

    from models.patches import PatchSampler, center_crops
    from models.registry import build
    from models.trainer import pick_device

    entries, images = load_ingested(ingest)
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
    learner = net
    if adapt is not None:
        from models.selfsup import Neighbor2Neighbor

        learner = Neighbor2Neighbor(net, adapt["pd"], adapt["gamma"])
    facts = {"device": device.type, "train_images": len(train_idx), "val_images": len(val_idx), "val_crop": val_size}
    return net, learner, sampler, center_crops(val_imgs, val_size), facts


def _group() -> dict:
    """What the config records of a data-parallel run: its number of processes."""
    from models.distributed import rank_and_size

    size = rank_and_size()[1]
    return {"processes": size} if size > 1 else {}


def adaptation_start(ingest_dir: StageResult | str, model: str = "auto") -> tuple[Path, dict]:
    """The model `denoise adapt` starts from, and its model config: `auto` is the blind white-noise model for
    the images' channels (skip-dae-color or -gray), which learns the folder's own noise: +1.0 dB on CC15 in 10
    minutes, where adapting the camera-noise model lost 2.4 dB (it knows camera noise already, and the
    self-supervised target keeps some of the noise that neighbours share); else a denoiser by name."""
    from flows.catalog import family, resolve_model

    images = open_stage(ingest_dir).manifest["images"]
    channels = 3 if any(e["shape"][2] == 3 for e in images) else 1
    folder = resolve_model(model, channels=channels, job=None if model == "auto" else "denoise",
                           noise="gaussian" if model == "auto" else "auto")
    if family(folder) != "denoise":
        raise ValueError(f"{folder.name}: a {family(folder)} model; denoise adapt fine-tunes a denoiser")
    config = read_config(folder)["model"]
    if config["channels"] != channels:
        raise ValueError(f"{folder.name} takes {config['channels']} channel(s); these images have {channels}")
    return folder, config


def train_windows(slug: str, upstream: tuple[str, ...], data: dict, train: tuple[np.ndarray, np.ndarray | None],
                  val: tuple[np.ndarray, np.ndarray | None], model: dict, training: dict,
                  refresh: bool = False, progress: bool = True, facts: dict | None = None, name: str | None = None,
                  dense: bool = False, *, job: str) -> StageResult:
    """Train (or find cached) a model on whole examples. By default a token-grid model (a `vae` or `cvae` with
    the categorical head) on windows; `dense`: a family model on real values.

    train, val: (x, cond (N, K) integers or None); x is (N, rows, cols) integer tokens, or for `dense`
    (N, *shape) floats. `data` describes the slice (game, split, ...); the stage key also hashes the arrays
    themselves, so it is content-addressed. `model` may leave out `shape` (taken from x), `vocab` (tokens:
    max token + 1) and a cvae's `cond` (max + 1 each). `facts` (derived from the arrays, so not hashed) are
    recorded beside `data` in the model's config, and so is `job` ("levels", "music" or "family": what
    flows.catalog lists the model under; not hashed, so recording it kept every key). Validation keeps the
    weights with the best ELBO unless `training` names another `select`. `name`: the folder's name instead
    of `<kind>-<slug>`.
    """
    from models import distributed
    from models.autoencoders import count_parameters
    from models.registry import parse_config
    from models.trainer import TrainConfig

    (x_tr, c_tr), (x_va, c_va) = train, val
    vocab = {} if dense else {"vocab": int(max(x_tr.max(), x_va.max())) + 1}
    model_cfg = {"shape": list(x_tr.shape[1:]), **vocab, **model}
    if model_cfg.get("kind") == "cvae" and "cond" not in model_cfg:
        model_cfg["cond"] = [int(v) + 1 for v in np.maximum(c_tr.max(0), c_va.max(0))]
    model_cfg = parse_config(model_cfg)
    train_cfg = TrainConfig(**{"select": "elbo", **training})
    config = {"model": model_cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"), "data": data}
    arrays = [a for a in (x_tr, c_tr, x_va, c_va) if a is not None]
    x_type = np.float32 if dense else np.int64
    contents = tuple(hashlib.sha256(np.ascontiguousarray(a, dtype=x_type if a is x_tr or a is x_va else np.int64)
                                    .tobytes()).hexdigest() for a in arrays)
    stage = Stage("train", VERSION, name or f"{model_cfg.kind}-{slug}", config, upstream=tuple(upstream),
                  contents=contents)

    def fill(tmp: Path) -> dict:
        with TrainProgress(f"train {stage.folder.name}", enabled=progress) as bar:
            warnings = _collect(bar.warn)
            (net, *_), result = distributed.run(window_parts, (train, val, x_type, model_cfg, train_cfg), train_cfg,
                                                stage.workdir / "ckpt", on_step=bar.update, warn=warnings)
        info = {"metrics": {f"val_{k}": round(v, 4) for k, v in result.best.items()}, "steps": result.steps,
                "seconds": result.seconds, "windows_per_s": result.samples_per_s,
                "resumed_from_step": result.resumed_from, "parameters": count_parameters(net),
                **({"warnings": warnings.said} if warnings.said else {}),
                "device": next(net.parameters()).device.type, **_group(),
                "data": {"job": job, **data, **(facts or {}), "train_windows": len(x_tr), "val_windows": len(x_va)}}
        save_model(net, tmp, config["model"], extra={"train": config["train"], "history": result.history, **info})
        plot_curve(result.history, tmp / "curve.png", title=stage.folder.name, metric=train_cfg.select)
        return info

    return run_train_stage(stage, fill, refresh, named=bool(name))


class WindowBatches:
    """Random batches of whole examples (and their conditions), drawn from the caller's generator."""

    def __init__(self, x, cond, batch_size: int):
        self.x, self.cond, self.batch_size = x, cond, batch_size

    def __call__(self, gen):
        import torch

        idx = torch.randint(len(self.x), (self.batch_size,), generator=gen, device=self.x.device)
        return self.x[idx] if self.cond is None else (self.x[idx], self.cond[idx])


def window_parts(train: tuple, val: tuple, x_type, model_cfg, train_cfg) -> tuple:
    """What each rank builds to train on whole examples: (net, net, batches, val, facts)."""
    import torch

    from models.registry import build
    from models.trainer import pick_device

    device = pick_device(train_cfg.device)
    tensor = lambda a, t=np.int64: None if a is None else torch.from_numpy(np.asarray(a, dtype=t)).to(device)
    (x_tr, c_tr), (x_va, c_va) = train, val
    x, c, vx, vc = tensor(x_tr, x_type), tensor(c_tr), tensor(x_va, x_type), tensor(c_va)
    conditional = model_cfg.kind == "cvae"
    torch.manual_seed(train_cfg.seed)
    net = build(model_cfg).to(device)
    return net, net, WindowBatches(x, c if conditional else None, train_cfg.batch_size), (vx, vc) if conditional else vx, {}


class _collect:
    """A `warn` callback that says each warning (on the bar's console) and keeps it for the manifest."""

    def __init__(self, say):
        self.say, self.said = say, []

    def __call__(self, message: str) -> None:
        self.said.append(message)
        self.say(message)


def _same_name(folder: Path, slug: str) -> bool:
    return re.fullmatch(re.escape(slugify(slug)) + r"-[0-9a-f]{12}", folder.name) is not None


def run_train_stage(stage: Stage, fill, refresh: bool, named: bool = False) -> StageResult:
    """run_stage for a train stage. `--refresh` starts clean: the stage's checkpoints (a killed run's, or a
    corrupted or poisoned one) are discarded instead of resumed. A finished folder of the same key under
    another name is copied rather than trained again (cached: nothing was trained); a `named` stage refuses a
    name another key holds."""
    folders = [p.parent for p in stage.folder.parent.glob("*/" + MANIFEST)]
    taken = [f for f in folders if _same_name(f, stage.slug) and f.name != stage.folder.name]
    if named and taken:
        raise FileExistsError(f"--name {slugify(stage.slug)}: already names {taken[0]} (other settings or data); choose "
                              "another name, or delete that folder to give the name to this model")
    if not refresh and not stage.folder.exists():
        for other in folders:
            manifest = read_manifest(other) if other.name.endswith("-" + stage.key[:12]) else None
            if manifest is not None and manifest.get("key") == stage.key and other != stage.folder:
                return replace(run_stage(stage, _copy_of(other, manifest)), cached=True)
    if refresh:
        shutil.rmtree(stage.workdir, ignore_errors=True)
    return run_stage(stage, fill, refresh)


def _copy_of(src: Path, manifest: dict):
    """A `fill` for run_stage: the files of a finished folder of the same key, with its record (when and how it
    was trained) and where it came from."""
    own = {"stage", "version", "key", "slug", "config", "upstream", "files"}      # run_stage writes these anew

    def fill(tmp: Path) -> dict:
        for rel in manifest["files"]:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tmp / rel)
        return {**{k: v for k, v in manifest.items() if k not in own}, "copied_from": src.name}
    return fill


def plot_curve(history: list[dict], path: Path, title: str, metric: str = "psnr") -> None:
    """Training loss and a validation metric (PSNR for denoisers, ELBO for VAEs) against steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [h["step"] for h in history]
    marker = "o" if len(steps) <= 20 else None           # a line through one or two points is barely visible
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    a.plot(steps, [h["train_loss"] for h in history], label="train", marker=marker)
    a.plot(steps, [h["val_loss"] for h in history], label="validation", marker=marker)
    a.set(xlabel="step", ylabel="MSE" if metric == "psnr" else "loss", yscale="log" if metric == "psnr" else "linear",
          title="loss")
    a.legend()
    b.plot(steps, [h[f"val_{metric}"] for h in history], color="tab:green", marker=marker)
    b.set(xlabel="step", ylabel="dB" if metric == "psnr" else metric, title=f"validation {metric}")
    for axis in (a, b):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))      # steps, not 2.95 ... 3.05
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
