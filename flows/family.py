"""The autoencoder family as a job: data -> train (one cached train stage per kind) -> samples and comparisons.

Data (`--data`): `digits` (scikit-learn's 1,797 8x8 digits, shipped with the package: the default), `mnist`
(the IDX files of a folder: `data/mnist/`, $AEFLOW_MNIST, or any folder given as the value; a fixed seeded
split of 8,000 training and 2,000 held-out images of the first 10,000), `faces` (scikit-image's
lfw_subset: 200 25x25 crops, label 1 for the 100 faces, 0 for the 100 non-faces) or an image folder
(gray, resized to `size` x `size`; labelled by subfolder when images sit in subfolders; unreadable files
listed in the manifest's `bad`). Values are intensities in [0, 1], modelled as Bernoulli probabilities.

Each set is read once into an ingest stage (`outputs/ingest/family-<name>-<key12>/`, keyed by the content of
its raw files: the IDX files, the images, or the package's own data file) holding the values, labels and
the fixed split; the train stages name it upstream.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flows.settings import outputs_root
from flows.stages import Stage, StageResult, content_key, run_stage
from formats.figures import image_grid
from models.checkpoints import write_bytes_atomic, write_json_atomic

KINDS = ("ae", "dae", "contractive_ae", "vae", "cvae")
SPLIT_SEED = 0
INGEST_VERSION = 1
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")     # the official test split
# defaults sized for each set on this 2-core CPU (bench/family.py measured them)
DEFAULTS = {"digits": {"widths": (256, 128), "steps": 6000}, "mnist": {"widths": (512, 256), "steps": 6000},
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
    key: str = ""                 # the ingest stage's key (a train stage's upstream)


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


def _source(data: str) -> tuple[str, Path, list[Path]]:
    """(kind, root, the raw files the examples are read from: what the ingest stage's key hashes)."""
    if data == "digits":
        import sklearn

        root = Path(sklearn.__file__).parent / "datasets" / "data"
        return "digits", root, [root / "digits.csv.gz"]
    if data == "faces":
        import skimage

        root = Path(skimage.__file__).parent / "data"
        return "faces", root, [root / "lfw_subset.npy"]
    if (folder := mnist_folder(data)) is not None:
        pick = lambda name: folder / name if (folder / name).is_file() else folder / (name + ".gz")   # noqa: E731
        return "mnist", folder, [pick(name) for name in MNIST_FILES]
    if data == "mnist":
        raise FileNotFoundError("--data mnist: no MNIST IDX files (t10k-images-idx3-ubyte[.gz]) in data/mnist/ or "
                                "$AEFLOW_MNIST; give the folder that holds them: --data PATH")
    from formats.images import find_images

    root = Path(data).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{data}: not a folder, nor digits, mnist or faces")
    return "folder", root, find_images(root)


def _read(kind: str, root: Path, files: list[Path], size: int) -> tuple[np.ndarray, np.ndarray | None, float, dict]:
    """(values (N, 1, H, W) as read, labels or None, scale: intensities are values / scale, facts) of a source."""
    if kind == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images.astype(np.uint8)[:, None], d.target.astype(np.int64), 16.0, {}      # 17 grey levels
    if kind == "faces":
        from skimage.data import lfw_subset

        labels = np.r_[np.ones(100), np.zeros(100)].astype(np.int64)      # faces first, then non-faces
        return lfw_subset().astype(np.float32)[:, None], labels, 1.0, {}
    if kind == "mnist":
        from formats.idx import read_idx

        images, labels = read_idx(files[0]), read_idx(files[1])
        if len(images) != len(labels):
            raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
        return images[:10000, None], labels[:10000].astype(np.int64), 255.0, {}
    from PIL import Image

    from formats.images import BadImage, read_image

    xs, names, bad = [], [], []
    for f in files:
        try:
            px = read_image(f).pixels                                      # (H, W, C) float in [0, 1]
        except BadImage as e:
            bad.append({"file": str(f.relative_to(root)), "reason": e.reason})
            continue
        gray = px.mean(2) if px.shape[2] == 3 else px[..., 0]
        im = Image.fromarray((gray * 255).round().astype(np.uint8)).resize((size, size), Image.LANCZOS)
        xs.append(np.asarray(im))
        names.append(f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "")
    if len(xs) < 2:
        raise ValueError(f"{root}: {len(xs)} readable image(s); a family model needs at least 2")
    classes = sorted(set(names))
    labels = np.array([classes.index(n) for n in names], np.int64) if len(classes) > 1 else None
    return np.stack(xs)[:, None], labels, 255.0, {"size": size, "classes": classes if labels is not None else None,
                                                  "bad": bad}


def ingest_examples(data: str = "digits", size: int = 28, refresh: bool = False) -> StageResult:
    """Read `data` (see the module's docstring) once into a cached stage, keyed by the content of its raw files,
    with its fixed split (examples.safetensors: values, labels, train and val indices)."""
    import safetensors.numpy

    kind, root, files = _source(data)
    config = {"kind": kind, "split_seed": SPLIT_SEED, **({"size": size} if kind == "folder" else {})}
    slug = f"family-{kind if kind != 'folder' else root.name}"
    stage = Stage("ingest", INGEST_VERSION, slug, config, contents=tuple(content_key(f) for f in files))

    def fill(tmp: Path) -> dict:
        x, labels, scale, facts = _read(kind, root, files, size)
        n_val = {"digits": 360, "faces": 40}.get(kind, len(x) // 5)        # MNIST: 10,000 -> 8,000 / 2,000
        train, val = split(len(x), n_val)
        arrays = {"x": np.ascontiguousarray(x), "train": train, "val": val,
                  **({"labels": labels} if labels is not None else {})}
        write_bytes_atomic(tmp / "examples.safetensors", safetensors.numpy.save(arrays))
        return {"name": kind if kind != "folder" else root.name, "source": str(root), "scale": scale,
                "examples": len(x), "train": len(train), "val": len(val), **facts}

    return run_stage(stage, fill, refresh)


def load_examples(data: str = "digits", size: int = 28, refresh: bool = False) -> Examples:
    """The examples of `data` with their fixed split, from the ingest stage (built on first use)."""
    import safetensors.numpy

    ingest = ingest_examples(data, size, refresh)
    folder, m = ingest.folder, ingest.manifest
    a = safetensors.numpy.load_file(str(folder / "examples.safetensors"))
    about = {"source": m["source"], "train": m["train"], "val": m["val"], "split_seed": m["config"]["split_seed"],
             "ingest": folder.name, **({"size": m["size"], "classes": m["classes"]} if "size" in m else {})}
    x = (a["x"] / m["scale"]).astype(np.float32)                           # in float64, then rounded once
    return Examples(x, a.get("labels"), a["train"], a["val"], m["name"], m["config"]["kind"], about, m["key"])


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
                 refresh: bool = False, progress: bool = True, examples: Examples | None = None) -> StageResult:
    """Train (or find cached) one family model."""
    from flows.train import train_windows

    ex = examples or load_examples(data, size)
    model = model_config(kind, ex, latent, beta, body, widths)
    budget = {"minutes": minutes} if minutes is not None else {"steps": steps or DEFAULTS[ex.kind]["steps"]}
    training = {**budget, "epoch_steps": 250, "batch_size": 128, "lr": 1e-3, "warmup_steps": 100, "seed": seed,
                "select": "neg_loss"}
    cond = ex.labels[:, None] if kind == "cvae" else None
    part = lambda idx: (ex.x[idx], None if cond is None else cond[idx])    # noqa: E731
    where = {k: ex.about[k] for k in ("source", "ingest") if k in ex.about}   # not hashed: the content is
    data = {"job": "family", "data": ex.name, **{k: v for k, v in ex.about.items() if k not in where}}
    return train_windows(ex.name, (ex.key,) if ex.key else (), data, part(ex.train), part(ex.val), model, training,
                         refresh=refresh, progress=progress, facts=where, name=name, dense=True, job="family")


def load_family_model(folder: str | Path):
    """A family model folder -> (model, its config.json)."""
    from models.checkpoints import read_config
    from models.registry import load_model

    config = read_config(Path(folder))
    if config["model"]["kind"] not in KINDS or "vocab" in config["model"]:          # token grids: levels, music
        raise ValueError(f"{folder}: a {config['model']['kind']} over tokens, not a family model; see `aeflow models`")
    return load_model(Path(folder)), config


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
    if cfg.kind != "cvae" and label is not None:
        raise ValueError(f"--label {label}: {folder.name} is a {cfg.kind}, not conditioned on a label")
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


def codes(net, ex: Examples, idx: np.ndarray):
    """(mu, logvar or None) of the examples `idx` (a cvae is given their labels)."""
    import torch

    cond = torch.from_numpy(ex.labels[idx][:, None]) if net.cfg.kind == "cvae" else None
    with torch.no_grad():
        return net.encode(torch.from_numpy(ex.x[idx]), cond)


def measure(folder: str | Path, ex: Examples, jacobian_images: int = 100) -> dict:
    """Held-out figures of one trained model: reconstruction MSE (the mean decoding of the mean code), KL and
    active units (VAE kinds), the exact squared Frobenius norm of the encoder's Jacobian (mean over
    `jacobian_images` held-out images), 5-NN accuracy of the held-out codes fitted on the training codes."""
    import torch

    from models.autoencoders import jacobian_norm2

    net, config = load_family_model(folder)
    cond = (lambda idx: torch.from_numpy(ex.labels[idx][:, None])) if net.cfg.kind == "cvae" else (lambda idx: None)
    (mu_t, _), (mu_v, logvar_v) = codes(net, ex, ex.train), codes(net, ex, ex.val)
    mse = float(net.reconstruction_error(torch.from_numpy(ex.x[ex.val]), cond(ex.val)).mean())
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


def _pca(ex: Examples, latent: int):
    from sklearn.decomposition import PCA

    return PCA(latent, random_state=0).fit(ex.x[ex.train].reshape(len(ex.train), -1))


def pca_row(ex: Examples, latent: int) -> dict:
    """PCA at the same code size: the linear baseline an autoencoder is a non-linear version of."""
    t0 = time.perf_counter()
    flat_t, flat_v = ex.x[ex.train].reshape(len(ex.train), -1), ex.x[ex.val].reshape(len(ex.val), -1)
    pca = _pca(ex, latent)
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
                   progress: bool = True, widths: tuple[int, ...] | None = None) -> dict:
    """Every kind at every code size beside PCA, and a beta sweep of the vae at the largest size: one table
    (report.json), a rate-distortion plot and, for 2-D codes, the held-out codes coloured by label."""
    ex = load_examples(data)
    rows = []
    for latent in latents:
        rows.append(pca_row(ex, latent))
        for kind in kinds:
            model = train_family(kind, latent=latent, steps=steps, progress=progress, examples=ex, widths=widths)
            rows.append(measure(model.folder, ex))
    sweep = []
    for beta in betas:
        folder = train_family("vae", latent=max(latents), beta=beta, steps=steps, progress=progress, examples=ex,
                              widths=widths).folder
        row = measure(folder, ex)
        sweep.append({"beta": beta, "distortion_nll": _nll(folder, ex), **row})
    report = {"data": ex.name, "split": ex.about, "rows": rows, "beta_sweep": sweep}
    if out_dir:
        out = Path(out_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        _save_png(_rate_distortion_figure(sweep, ex.name), out / "beta-sweep.png")
        report["pngs"] = [str(out / "beta-sweep.png")]
        if 2 in latents and ex.labels is not None:
            panels = [("PCA", _pca(ex, 2).transform(ex.x[ex.val].reshape(len(ex.val), -1)))]
            panels += [(r["kind"], codes(load_family_model(outputs_root() / "train" / r["model"])[0], ex, ex.val)[0]
                        .numpy()) for r in rows if r["latent"] == 2 and r["kind"] != "pca"]
            _save_png(_codes_figure(panels, ex.labels[ex.val], ex.name), out / "codes-2d.png")
            report["pngs"].append(str(out / "codes-2d.png"))
        write_json_atomic(out / "report.json", report)
    return report


def _nll(folder: str | Path, ex: Examples) -> float:
    """Held-out reconstruction NLL in nats per image from the mean code: the distortion of rate-distortion."""
    import torch

    net, _ = load_family_model(folder)
    xv = torch.from_numpy(ex.x[ex.val])
    with torch.no_grad():
        mu, _ = net.encode(xv)
        return float(net.head.nll(net.decode(mu), xv).mean())


def _save_png(fig, path: Path) -> None:
    """A matplotlib figure -> PNG, written atomically."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _rate_distortion_figure(sweep: list[dict], title: str):
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
    return fig


def _codes_figure(panels: list[tuple[str, np.ndarray]], labels: np.ndarray, title: str):
    """The 2-D held-out codes of each model, one panel each, coloured by label, one legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3), dpi=100, squeeze=False)
    for ax, (name, z) in zip(axes[0], panels):
        points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5, vmax=9.5)
        ax.set(title=name, xlabel="z0", ylabel="z1")
    fig.legend(*points.legend_elements(), loc="center right", title="label", fontsize=7)
    fig.suptitle(f"held-out codes on {title} (z = 2; a cvae's codes hold the style, its label is c)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.94, 1))
    return fig


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
