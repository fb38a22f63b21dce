"""The autoencoder family as a job: data -> train (one cached train stage per kind) -> samples and comparisons.

Data (`--data`): `digits` (scikit-learn's 1,797 8x8 digits, shipped with the package: the default), `mnist`
(the IDX files of a folder: `data/mnist/`, $AEFLOW_MNIST, or any folder given as the value; a fixed seeded
split of 8,000 training and 2,000 held-out images of the first 10,000), `faces` (scikit-image's
lfw_subset: 200 25x25 crops, label 1 for the 100 faces, 0 for the 100 non-faces) or an image folder
(gray, resized to `size` x `size`; labelled by subfolder when images sit in subfolders). Values are
intensities in [0, 1], modelled as Bernoulli probabilities.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flows.settings import outputs_root
from models.checkpoints import write_bytes_atomic, write_json_atomic

KINDS = ("ae", "dae", "contractive_ae", "vae", "cvae")
SPLIT_SEED = 0
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")     # the official test split
# defaults sized for each set on this 2-core CPU (bench/family.py measured them)
DEFAULTS = {"digits": {"widths": (256, 128), "steps": 3000}, "mnist": {"widths": (512, 256), "steps": 6000},
            "faces": {"widths": (256, 128), "steps": 2000}, "folder": {"widths": (512, 256), "steps": 4000}}


@dataclass
class Examples:
    x: np.ndarray                 # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray | None     # (N,) int64, or None
    train: np.ndarray             # indices of the training examples
    val: np.ndarray               # indices of the held-out examples
    name: str                     # digits, mnist, faces or the folder's name
    kind: str                     # digits, mnist, faces or folder
    about: dict                   # what the split is, for reports and model configs


def split(n: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def mnist_folder(data: str) -> Path | None:
    """The folder holding MNIST's IDX files for `--data data`, or None when `data` names no such folder."""
    if data == "mnist":
        candidates = [Path(os.environ["AEFLOW_MNIST"])] if os.environ.get("AEFLOW_MNIST") else []
        candidates.append(outputs_root().parent / "data" / "mnist")
    else:
        candidates = [Path(data).expanduser()]
    for folder in candidates:
        if any((folder / (f + s)).is_file() for f in MNIST_FILES[:1] for s in ("", ".gz")):
            return folder
    return None


def load_examples(data: str = "digits", size: int = 28) -> Examples:
    """The examples of `data` (see the module's docstring) with their fixed split."""
    if data == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[:, None]                 # (1797, 1, 8, 8), 17 grey levels
        tr, va = split(len(x), 360)
        return Examples(x, d.target.astype(np.int64), tr, va, "digits", "digits",
                        {"source": "scikit-learn load_digits", "train": len(tr), "val": len(va), "split_seed": SPLIT_SEED})
    if data == "faces":
        from skimage.data import lfw_subset

        x = lfw_subset().astype(np.float32)[:, None]                       # (200, 1, 25, 25)
        labels = np.r_[np.ones(100), np.zeros(100)].astype(np.int64)       # faces first, then non-faces
        tr, va = split(len(x), 40)
        return Examples(x, labels, tr, va, "faces", "faces",
                        {"source": "scikit-image lfw_subset", "train": len(tr), "val": len(va), "split_seed": SPLIT_SEED})
    if (folder := mnist_folder(data)) is not None:
        from formats.idx import read_idx

        def idx(name: str) -> np.ndarray:
            path = folder / name if (folder / name).is_file() else folder / (name + ".gz")
            return read_idx(path)

        images, labels = idx(MNIST_FILES[0]), idx(MNIST_FILES[1])
        if len(images) != len(labels):
            raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels")
        x = (images[:10000] / 255.0).astype(np.float32)[:, None]
        tr, va = split(len(x), len(x) // 5)                                 # 10,000 -> 8,000 / 2,000
        return Examples(x, labels[:10000].astype(np.int64), tr, va, "mnist", "mnist",
                        {"source": str(folder), "train": len(tr), "val": len(va), "split_seed": SPLIT_SEED})
    if data == "mnist":
        raise FileNotFoundError("--data mnist: no MNIST IDX files (t10k-images-idx3-ubyte[.gz]) in data/mnist/ or "
                                "$AEFLOW_MNIST; give the folder that holds them: --data PATH")
    return _image_folder(Path(data).expanduser(), size)


def _image_folder(root: Path, size: int) -> Examples:
    from PIL import Image

    from formats.images import BadImage, find_images, read_image

    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder, nor digits, mnist or faces")
    files = find_images(root)
    xs, names = [], []
    for f in files:
        try:
            px = read_image(f).pixels                                      # (H, W, C) float in [0, 1]
        except BadImage:
            continue                                                       # a family model needs no report of these
        gray = px.mean(2) if px.shape[2] == 3 else px[..., 0]
        im = Image.fromarray((gray * 255).round().astype(np.uint8)).resize((size, size), Image.LANCZOS)
        xs.append(np.asarray(im, np.float32) / 255)
        names.append(f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "")
    if len(xs) < 2:
        raise ValueError(f"{root}: {len(xs)} readable image(s); a family model needs at least 2")
    classes = sorted(set(names))
    labels = np.array([classes.index(n) for n in names], np.int64) if len(classes) > 1 else None
    tr, va = split(len(xs), max(1, len(xs) // 5))
    return Examples(np.stack(xs)[:, None], labels, tr, va, root.name, "folder",
                    {"source": str(root), "size": size, "classes": classes if labels is not None else None,
                     "train": len(tr), "val": len(va), "split_seed": SPLIT_SEED})


def model_config(kind: str, ex: Examples, latent: int = 2, beta: float | None = None, body: str = "mlp",
                 widths: tuple[int, ...] | None = None) -> dict:
    if kind not in KINDS:
        raise ValueError(f"--kind {kind}: use one of {', '.join(KINDS)}")
    cfg = {"kind": kind, "latent": latent, "body": body, "widths": list(widths or DEFAULTS[ex.kind]["widths"]),
           "head": "bernoulli"}
    if beta is not None:
        if kind not in ("vae", "cvae"):
            raise ValueError(f"--beta: only vae and cvae weigh a KL term, not {kind}")
        cfg["beta"] = beta
    if kind == "cvae":
        if ex.labels is None:
            raise ValueError(f"--kind cvae: {ex.name} has no labels to condition on")
        cfg["cond"] = [int(ex.labels.max()) + 1]
    return cfg


def train_family(kind: str = "vae", data: str = "digits", latent: int = 2, beta: float | None = None,
                 steps: int | None = None, minutes: float | None = None, body: str = "mlp",
                 widths: tuple[int, ...] | None = None, size: int = 28, name: str | None = None, seed: int = 0,
                 refresh: bool = False, progress: bool = True, examples: Examples | None = None) -> str:
    """Train (or find cached) one family model; returns its folder."""
    from flows.train import train_windows

    ex = examples or load_examples(data, size)
    model = model_config(kind, ex, latent, beta, body, widths)
    budget = {"minutes": minutes} if minutes is not None else {"steps": steps or DEFAULTS[ex.kind]["steps"]}
    training = {**budget, "epoch_steps": 250, "batch_size": 128, "lr": 1e-3, "warmup_steps": 100, "seed": seed,
                "select": "neg_loss"}
    cond = ex.labels[:, None] if kind == "cvae" else None
    part = lambda idx: (ex.x[idx], None if cond is None else cond[idx])    # noqa: E731
    return train_windows(ex.name, (), {"job": "family", "data": ex.name, **ex.about}, part(ex.train), part(ex.val),
                         model, training, refresh=refresh, progress=progress, name=name, dense=True)


def load_family_model(folder: str | Path):
    """A family model folder -> (model, its config.json)."""
    from models.checkpoints import read_config
    from models.registry import load_model

    config = read_config(Path(folder))
    if config["model"]["kind"] not in KINDS or "vocab" in config["model"]:          # token grids: levels, music
        raise ValueError(f"{folder}: a {config['model']['kind']} over tokens, not a family model; see `aeflow models`")
    return load_model(Path(folder)), config


def image_grid(x: np.ndarray, cols: int, scale: int = 4, pad: int = 1) -> np.ndarray:
    """(N, 1, H, W) in [0, 1] -> one uint8 (rows * (H + pad), cols * (W + pad)) image, each cell scaled up."""
    n, _, h, w = x.shape
    rows = -(-n // cols)
    out = np.ones((rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad), np.float32)
    for i, img in enumerate(x[:, 0]):
        r, c = divmod(i, cols)
        cell = np.kron(img, np.ones((scale, scale), np.float32))
        out[pad + r * (h * scale + pad):][:h * scale, pad + c * (w * scale + pad):][:, :w * scale] = cell
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def sample_family(model: str, out_dir: str, label: int | None = None, n: int = 64, seed: int = 0,
                  temperature: float = 0.0) -> dict:
    """n samples from a family VAE's prior (a cvae's: of the digit `label`, in n styles), as one PNG grid
    and report.json. Plain autoencoders have no prior to sample: decode what they were trained on instead
    (`aeflow latent`)."""
    import io

    import torch
    from PIL import Image

    from flows.catalog import resolve_model

    folder = resolve_model(model, channels=1, job="family")
    net, config = load_family_model(folder)
    cfg = net.cfg
    if cfg.kind not in ("vae", "cvae"):
        raise ValueError(f"{folder.name}: a {cfg.kind} has no prior to sample from; sample a vae or cvae")
    if cfg.kind == "cvae" and label is None:
        raise ValueError(f"{folder.name}: a cvae samples one label at a time: --label 0..{cfg.cond[0] - 1}")
    if cfg.kind == "cvae" and not 0 <= label < cfg.cond[0]:
        raise ValueError(f"--label {label}: {folder.name} knows labels 0..{cfg.cond[0] - 1}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(n, cfg.latent, generator=gen)
        cond = torch.full((n, 1), label) if cfg.kind == "cvae" else None
        x = net.draw(net.decode(z, cond), gen, temperature).numpy()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    grid = image_grid(x, cols=int(np.ceil(np.sqrt(n))), scale=max(1, 96 // cfg.shape[-1]))
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    png = out / (f"samples-label{label}.png" if label is not None else "samples.png")
    write_bytes_atomic(png, buf.getvalue())
    report = {"model": folder.name, "kind": cfg.kind, "label": label, "n": n, "seed": seed,
              "temperature": temperature, "png": str(png), "data": config.get("data", {}).get("data")}
    write_json_atomic(out / "report.json", report)
    return report


# ---------------------------------------------------------------- what each kind does (family compare, bench)

def active_units(mu: np.ndarray, threshold: float = 0.01) -> int:
    """Units whose posterior mean varies over the data: Cov_x(E_q[z_u]) > 0.01 (Burda et al., ICLR 2016)."""
    return int((mu.var(0) > threshold).sum())


def knn_accuracy(train_codes, train_labels, val_codes, val_labels, k: int = 5) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(k).fit(train_codes, train_labels).score(val_codes, val_labels))


def measure(folder: str, ex: Examples, jacobian_images: int = 100) -> dict:
    """Held-out figures of one trained model: reconstruction MSE (the mean decoding of the mean code), KL and
    active units (VAE kinds), the exact squared Frobenius norm of the encoder's Jacobian (mean over
    `jacobian_images` held-out images), 5-NN accuracy of the held-out codes fitted on the training codes."""
    import torch

    from models.autoencoders import jacobian_norm2

    net, config = load_family_model(folder)
    cond = (lambda idx: torch.from_numpy(ex.labels[idx][:, None])) if net.cfg.kind == "cvae" else (lambda idx: None)
    xt, xv = torch.from_numpy(ex.x[ex.train]), torch.from_numpy(ex.x[ex.val])
    with torch.no_grad():
        mu_t, _ = net.encode(xt, cond(ex.train))
        mu_v, logvar_v = net.encode(xv, cond(ex.val))
        mse = float(net.reconstruction_error(xv, cond(ex.val)).mean())
    row = {"model": Path(folder).name, "kind": net.cfg.kind, "latent": net.cfg.latent, "mse": mse,
           "seconds": config.get("seconds"), "steps": config.get("steps")}
    if logvar_v is not None:
        row["kl"] = float((-0.5 * (1 + logvar_v - mu_v.pow(2) - logvar_v.exp()).sum(1)).mean())
        row["active_units"] = active_units(mu_v.numpy())
    some = ex.val[:jacobian_images]
    row["jacobian_fro2"] = float(jacobian_norm2(lambda v: net.encode(v, cond(some))[0],
                                                torch.from_numpy(ex.x[some])).mean())
    if ex.labels is not None:
        row["knn5"] = knn_accuracy(mu_t.numpy(), ex.labels[ex.train], mu_v.numpy(), ex.labels[ex.val])
    return row


def pca_row(ex: Examples, latent: int) -> dict:
    """PCA at the same code size: the linear baseline an autoencoder is a non-linear version of."""
    from sklearn.decomposition import PCA

    t0 = time.perf_counter()
    flat_t, flat_v = ex.x[ex.train].reshape(len(ex.train), -1), ex.x[ex.val].reshape(len(ex.val), -1)
    pca = PCA(latent, random_state=0).fit(flat_t)
    codes_v = pca.transform(flat_v)
    row = {"model": "PCA", "kind": "pca", "latent": latent,
           "mse": float(((pca.inverse_transform(codes_v) - flat_v) ** 2).mean()),
           "seconds": round(time.perf_counter() - t0, 2), "steps": None,
           "jacobian_fro2": float((pca.components_ ** 2).sum())}             # a linear map's J is constant
    if ex.labels is not None:
        row["knn5"] = knn_accuracy(pca.transform(flat_t), ex.labels[ex.train], codes_v, ex.labels[ex.val])
    return row


def compare_family(data: str = "digits", latents: tuple[int, ...] = (2, 8), kinds: tuple[str, ...] = KINDS,
                   betas: tuple[float, ...] = (0.25, 1, 4, 16), out_dir: str | None = None, steps: int | None = None,
                   progress: bool = True) -> dict:
    """Every kind at every code size beside PCA, and a beta sweep of the vae at the largest size: one table
    (report.json), a rate-distortion plot and, for 2-D codes, the held-out codes coloured by label."""
    ex = load_examples(data)
    rows = []
    for latent in latents:
        rows.append(pca_row(ex, latent))
        for kind in kinds:
            folder = train_family(kind, latent=latent, steps=steps, progress=progress, examples=ex)
            rows.append(measure(folder, ex))
    sweep = []
    for beta in betas:
        folder = train_family("vae", latent=max(latents), beta=beta, steps=steps, progress=progress, examples=ex)
        row = measure(folder, ex)
        sweep.append({"beta": beta, "distortion_nll": _nll(folder, ex), **row})
    report = {"data": ex.name, "split": ex.about, "rows": rows, "beta_sweep": sweep}
    if out_dir:
        out = Path(out_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        _rate_distortion_png(sweep, out / "beta-sweep.png", ex.name)
        report["pngs"] = [str(out / "beta-sweep.png")]
        write_json_atomic(out / "report.json", report)
    return report


def _nll(folder: str, ex: Examples) -> float:
    """Held-out reconstruction NLL in nats per image from the mean code: the distortion of rate-distortion."""
    import torch

    net, _ = load_family_model(folder)
    xv = torch.from_numpy(ex.x[ex.val])
    with torch.no_grad():
        mu, _ = net.encode(xv)
        return float(net.head.nll(net.decode(mu), xv).mean())


def _rate_distortion_png(sweep: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    a.plot([r["kl"] for r in sweep], [r["distortion_nll"] for r in sweep], marker="o")
    for r in sweep:
        a.annotate(f"β={r['beta']:g}", (r["kl"], r["distortion_nll"]), textcoords="offset points", xytext=(4, 4))
    a.set(xlabel="rate: KL (nats per image)", ylabel="distortion: NLL (nats per image)", title="rate-distortion")
    b.plot([r["beta"] for r in sweep], [r["active_units"] for r in sweep], marker="o", color="tab:green")
    b.set(xscale="log", xlabel="β", ylabel="active units (Burda 0.01)", title="posterior collapse")
    fig.suptitle(f"vae β sweep on {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_table(report: dict) -> str:
    """report.json of compare_family as a markdown table (terminal and Prefect artifact alike)."""
    head = "| model | kind | z | held-out MSE | KL | active | ‖J‖²_F | 5-NN | train s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    fmt = lambda v, f: "–" if v is None else format(v, f)                  # noqa: E731
    lines = [head] + [f"| {r['model']} | {r['kind']} | {r['latent']} | {r['mse']:.4f} | {fmt(r.get('kl'), '.1f')} | "
                      f"{fmt(r.get('active_units'), 'd')} | {r['jacobian_fro2']:.2f} | {fmt(r.get('knn5'), '.3f')} | "
                      f"{fmt(r.get('seconds'), '.1f')} |" for r in report["rows"]]
    lines += ["", "| β | KL (rate) | NLL (distortion) | active units | held-out MSE |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['beta']:g} | {r['kl']:.2f} | {r['distortion_nll']:.1f} | {r['active_units']} | {r['mse']:.4f} |"
              for r in report["beta_sweep"]]
    return "\n".join(lines)
