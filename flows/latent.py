"""Latent-space tools for every bottleneck model (`aeflow latent map|manifold|traverse|interpolate`): the
family's (flows/family.py), the level VAEs and the music VAEs. A `Space` gives the procedures of
models/latent.py what they need from each domain: held-out data with labels to colour by, a condition for a
cvae, and a picture of a decoded item. Plain functions; their Prefect flows are in flows/pipelines.py.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from formats import figures
from models.checkpoints import write_bytes_atomic, write_report

METHODS = ("auto", "direct", "pca", "tsne", "umap")


@dataclass
class Space:
    net: object                                   # a model with the latent contract (models/latent.py)
    folder: Path
    job: str                                      # "family", "levels" or "music"
    config: dict
    render: Callable                              # decoded items (model output) -> list of uint8 pictures
    data: Callable                                # (n, color_by) -> (x, cond, labels, label names, what labels are)
    cond: object = None                           # the condition decoded items get (a cvae's; else None)
    color_by: tuple[str, ...] = ()
    temperature: float = 0.0                      # decoding: 0 the most likely output, 1 the model as trained
    gen: object = field(default=None)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def is_vae(self) -> bool:
        return self.net.cfg.kind in ("vae", "cvae")

    def decode(self, z, cond=None):
        """(N, latent) -> pictures, decoded in chunks at this space's temperature, with `cond` (N, ...) or else
        this space's condition."""
        import torch

        pics = []
        with torch.no_grad():
            for i in range(0, len(z), 256):
                chunk = z[i:i + 256]
                c = cond[i:i + 256] if cond is not None else None if self.cond is None else self.cond.expand(len(chunk), -1)
                pics += self.render(self.net.draw(self.net.decode(chunk, c), self.gen, self.temperature))
        return pics


def load_space(model: str, label: int | None = None, temperature: float | None = None, seed: int = 0) -> Space:
    """Any bottleneck model by folder, shipped name or unique prefix; a skip_dae is refused in one line.
    `label`: the condition a cvae decodes with (its first category by default)."""
    import torch

    from flows.catalog import family, resolve_model
    from models.checkpoints import read_config
    from models.latent import check_bottleneck
    from models.registry import load_model

    folder = resolve_model(model, channels=0)
    config = read_config(folder)
    net = load_model(folder)
    check_bottleneck(net, folder.name)
    job = family(folder)
    maker = {"family": _family_space, "levels": _levels_space, "music": _music_space}.get(job)
    if maker is None:
        raise ValueError(f"{folder.name}: a {job} model; the latent commands take family, level and music models")
    space = maker(net, folder, config, label)
    if temperature is not None:
        space.temperature = temperature
    space.gen = torch.Generator().manual_seed(seed)
    return space


def _cvae_condition(net, label: int | None, known: str):
    import torch

    if net.cfg.kind != "cvae":
        if label is not None:
            raise ValueError(f"--label: only a cvae decodes with a condition (this is a {net.cfg.kind})")
        return None
    sizes = list(net.cfg.cond)
    value = 0 if label is None else label
    if not 0 <= value < sizes[0]:
        raise ValueError(f"--label {value}: this cvae knows {known} 0..{sizes[0] - 1}")
    return torch.tensor([[value] + [0] * (len(sizes) - 1)])


def _family_space(net, folder, config, label) -> Space:
    import torch

    from flows.family import load_examples

    shape = net.cfg.shape

    def render(x):
        x = (x.float().clamp(0, 1) * 255).round().byte().numpy()           # (N, C, H, W)
        return [img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0) for img in x]

    def data(n, color_by):
        ex = load_examples(config["data"]["data"], shape[-1])
        idx = ex.val[:n]
        labels = None if ex.labels is None else ex.labels[idx]
        cond = torch.from_numpy(labels[:, None]) if net.cfg.kind == "cvae" else None
        names = None if labels is None else [str(k) for k in range(int(ex.labels.max()) + 1)]
        return torch.from_numpy(ex.x[idx]), cond, labels, names, "label"

    return Space(net, folder, "family", config, render, data, _cvae_condition(net, label, "labels"), ("label",))


def _levels_space(net, folder, config, label) -> Space:
    import torch

    from flows.levels import _training_units, mario_conditions, mario_features
    from formats.levels import get_legend, render_level

    game = config["data"]["game"]
    legend = get_legend(game)
    is_mario = game == "mario"

    def render(grids):
        return [render_level(g, legend, 6) for g in grids.numpy().astype(np.uint8)]

    def data(n, color_by):
        units, _ = _training_units(config)
        pick = np.sort(np.random.default_rng(0).choice(len(units), min(n, len(units)), replace=False))
        g = units[pick]
        cond = torch.from_numpy(mario_conditions(g)) if net.cfg.kind == "cvae" else None
        if not is_mario:
            return torch.from_numpy(g.astype(np.int64)), cond, None, None, ""
        counts = np.minimum(mario_features(g)[color_by], 4)
        return (torch.from_numpy(g.astype(np.int64)), cond, counts, ["0", "1", "2", "3", "4+"],
                f"{color_by} per window")

    return Space(net, folder, "levels", config, render, data, _cvae_condition(net, label, "condition buckets"),
                 ("enemies", "pipes", "gaps") if is_mario else (), temperature=0.0)


def _music_space(net, folder, config, label) -> Space:
    import torch
    from PIL import Image

    from flows.music import ENCODINGS, cond_columns, corpus_ingest, window_split
    from formats.music import canonical, roll_to_png

    d = config["data"]
    enc = ENCODINGS[d["mode"]]
    cols = cond_columns(d.get("condition"))

    def render(rolls):
        return [np.asarray(Image.open(io.BytesIO(roll_to_png(canonical(r), enc))).convert("RGB"))
                for r in rolls.numpy()]

    def data(n, color_by):
        ingest = corpus_ingest(d)
        if isinstance(ingest, str):
            raise ValueError(f"{folder.name}: no held-out data to map: {ingest}")
        _, (xv, lv), _, _ = window_split(ingest, int(d["bars"]), augment_train=False, max_val=n)
        cond = torch.from_numpy(lv[:, cols]) if cols else None
        if color_by == "mode":
            return torch.from_numpy(xv), cond, lv[:, 2], ["major", "minor"], "mode"
        return torch.from_numpy(xv), cond, lv[:, 1], TONICS, "key (tonic)"

    return Space(net, folder, "music", config, render, data, _cvae_condition(net, label, "condition values"),
                 ("key", "mode"), temperature=0.0)


TONICS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]


def project(codes: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, latent) -> (N, 2) and the method used. auto: the code itself when 2-D, else UMAP when umap-learn is
    installed, else t-SNE (scikit-learn)."""
    import torch

    from models.latent import project_2d

    if method not in METHODS:
        raise ValueError(f"--method {method!r}: one of {', '.join(METHODS)}")
    if method == "auto":
        if codes.shape[1] == 2:
            method = "direct"
        else:
            import importlib.util

            method = "umap" if importlib.util.find_spec("umap") else "tsne"
    if method == "direct":
        if codes.shape[1] != 2:
            raise ValueError(f"--method direct needs a 2-D code; this one has {codes.shape[1]} units (try pca, tsne)")
        return codes, method
    if method == "pca":
        return project_2d(torch.from_numpy(codes)).numpy(), method
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, init="pca", random_state=seed, perplexity=min(30, len(codes) - 1)).fit_transform(codes), method
    try:
        import umap
    except ImportError:
        raise ValueError("--method umap needs umap-learn: pip install -e '.[umap]' (or use tsne)") from None
    return umap.UMAP(random_state=seed).fit_transform(codes), method


def _out(out_dir: str) -> Path:
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------- the four commands

def latent_map(model: str, out_dir: str, method: str = "auto", color_by: str | None = None, n: int = 2000,
               seed: int = 0) -> dict:
    """The posterior means of up to n held-out items, projected to 2-D, coloured by label: map.png."""
    from models.latent import encode_all

    t0 = time.perf_counter()
    space = load_space(model, seed=seed)
    color_by = color_by or (space.color_by[0] if space.color_by else None)
    if color_by is not None and color_by not in space.color_by:
        raise ValueError(f"--color-by {color_by!r}: {space.name} colours by {', '.join(space.color_by) or 'nothing'}")
    x, cond, labels, names, what = space.data(n, color_by)
    mu, _ = encode_all(space.net, x, cond)
    codes = mu.numpy()
    xy, used = project(codes, method, seed)
    out = _out(out_dir)
    title = f"{space.name}: {len(codes)} held-out items, {used}" + ("" if used == "direct" else f" of {codes.shape[1]}-D codes")
    axes = ("z[0]", "z[1]") if used == "direct" else (f"{used} 1", f"{used} 2")
    write_bytes_atomic(out / "map.png", figures.scatter(xy, labels, names, title, axes, legend_title=what))
    report = {"model": str(space.folder), "job": space.job, "method": used, "items": len(codes),
              "latent": int(codes.shape[1]), "color_by": color_by, "png": "map.png",
              "seconds": round(time.perf_counter() - t0, 2)}
    if labels is not None and len(np.unique(labels)) > 1:
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.model_selection import cross_val_score

        # how well the label can be read off the 2-D picture itself (5-fold 5-NN): a number to go with the look
        report["knn5_2d"] = round(float(cross_val_score(KNeighborsClassifier(5), xy, labels, cv=5).mean()), 3)
    return write_report(out, report, ["map.png"])


def _center_and_scale(space: Space, n: int = 1000):
    """Where a sweep is centred and how far one step goes: the prior (0, 1) for a VAE; for an AE, the mean
    and spread of its codes over held-out data (its space has no prior)."""
    import torch

    from models.latent import encode_all

    latent = space.net.cfg.latent
    if space.is_vae:
        return torch.zeros(latent), torch.ones(latent), None
    x, cond, *_ = space.data(n, space.color_by[0] if space.color_by else None)
    mu, _ = encode_all(space.net, x, cond)
    return mu.mean(0), mu.std(0).clamp_min(1e-6), mu


def latent_manifold(model: str, out_dir: str, n: int = 15, label: int | None = None, temperature: float = 0.0,
                    dims: tuple[int, int] | None = None) -> dict:
    """Items decoded from a regular n x n lattice over two units (a 2-D code's own; otherwise the two most
    active), the others held at the centre: manifold.png with the unit values on its axes."""
    from models.latent import decoder_sensitivity, gaussian_quantiles, lattice, most_active

    space = load_space(model, label, temperature)
    latent = space.net.cfg.latent
    center, scale, mu = _center_and_scale(space)
    if dims is None:                                        # a VAE: the units its decoder uses, found without data
        dims = (0, 1) if latent == 2 else tuple(most_active(mu, 2)) if mu is not None else \
            tuple(decoder_sensitivity(space.net, space.cond).argsort(descending=True)[:2].tolist())
    if max(dims) >= latent or dims[0] == dims[1]:
        raise ValueError(f"--dims {dims}: two different units of 0..{latent - 1}")
    q = gaussian_quantiles(n)                               # prior quantiles; an AE: its codes' mean +- spread
    vx, vy = center[dims[0]] + scale[dims[0]] * q, center[dims[1]] + scale[dims[1]] * q
    z = lattice(center, dims, vx, vy)                       # (n, n, latent), top row = largest y
    pics = space.decode(z.reshape(-1, latent))
    cells = [pics[i * n:(i + 1) * n] for i in range(n)]
    out = _out(out_dir)
    png = figures.grid(cells, [f"{v:.2f}" for v in vx.tolist()], [f"{v:.2f}" for v in vy.flip(0).tolist()],
                       f"{space.name}: decoded lattice", (f"z[{dims[0]}]", f"z[{dims[1]}]"), cell=_cell(pics))
    write_bytes_atomic(out / "manifold.png", png)
    report = {"model": str(space.folder), "job": space.job, "dims": list(dims), "n": n,
              "values_x": [round(v, 4) for v in vx.tolist()], "values_y": [round(v, 4) for v in vy.tolist()],
              "temperature": space.temperature, "condition": _cond_list(space), "png": "manifold.png"}
    return write_report(out, report, ["manifold.png"])


def latent_traverse(model: str, out_dir: str, dims: list[int] | None = None, spread: float = 3.0, steps: int = 9,
                    label: int | None = None, temperature: float = 0.0) -> dict:
    """One row per unit: that unit swept from -spread to +spread (prior standard deviations for a VAE, code
    standard deviations for an AE) around the centre, the others held: traverse.png."""
    import torch

    from models.latent import traverse

    space = load_space(model, label, temperature)
    latent = space.net.cfg.latent
    dims = list(range(min(latent, 8))) if dims is None else dims
    if not dims or any(not 0 <= d < latent for d in dims):
        raise ValueError(f"--dims {','.join(map(str, dims))}: units in 0..{latent - 1}")
    center, scale, _ = _center_and_scale(space)
    offsets = torch.linspace(-spread, spread, steps)
    z = traverse(center, dims, center[dims, None] + scale[dims, None] * offsets)   # (dims, steps, latent)
    pics = space.decode(z.reshape(-1, latent))
    cells = [pics[i * steps:(i + 1) * steps] for i in range(len(dims))]
    out = _out(out_dir)
    unit = "σ" if space.is_vae else "code std"
    png = figures.grid(cells, [f"{v:+.2g}" for v in offsets.tolist()], [f"z[{d}]" for d in dims],
                       f"{space.name}: one unit at a time", (f"offset from the centre ({unit})", "unit"),
                       cell=_cell(pics))
    write_bytes_atomic(out / "traverse.png", png)
    report = {"model": str(space.folder), "job": space.job, "dims": dims, "spread": spread, "steps": steps,
              "temperature": space.temperature, "condition": _cond_list(space), "png": "traverse.png"}
    return write_report(out, report, ["traverse.png"])


def latent_interpolate(model: str, a: str, b: str, out_dir: str, steps: int = 10, spherical: bool | None = None,
                       temperature: float | None = None, seed: int = 0) -> dict:
    """Decode `steps` points between the codes of A and B. Family models: A and B are image files or
    held-out item numbers; level and music models: level or MIDI files, through `levels interpolate` and
    `music interpolate` (window by window, with their statistics per step)."""
    from flows.catalog import family, resolve_model

    job = family(resolve_model(model, channels=0))
    given = {k: v for k, v in (("spherical", spherical), ("temperature", temperature)) if v is not None}
    if job == "levels":
        from flows.levels import interpolate_levels

        return interpolate_levels(a, b, out_dir, steps, model, seed=seed, **given)
    if job == "music":
        from flows.music import interpolate_music

        return interpolate_music(a, b, out_dir, model, steps, seed=seed, **given)
    import torch

    from models.latent import interpolate

    space = load_space(model, None, temperature or 0.0, seed)
    x, cond, labels = _family_items(space, (a, b))
    mu, _ = space.net.encode(x, cond)
    spherical = bool(spherical)
    z = interpolate(mu[0], mu[1], steps, spherical)
    conds = None if cond is None else torch.stack([cond[0] if t < 0.5 else cond[1] for t in np.linspace(0, 1, steps)])
    pics = space.decode(z, conds)                          # a cvae: A's condition, then B's from the middle on
    originals = space.render(x)
    out = _out(out_dir)
    ts = np.linspace(0, 1, steps)
    png = figures.grid([[originals[0]] + pics + [originals[1]]], ["A"] + [f"{t:.2f}" for t in ts] + ["B"], [""],
                       f"{space.name}: {'slerp' if spherical else 'lerp'} from A to B", ("t", ""), cell=_cell(pics))
    write_bytes_atomic(out / "interpolate.png", png)
    report = {"model": str(space.folder), "job": space.job, "a": a, "b": b, "steps": steps,
              "path": "slerp" if spherical else "lerp", "labels": labels, "png": "interpolate.png"}
    return write_report(out, report, ["interpolate.png"])


def _family_items(space: Space, refs: tuple[str, str]):
    """Image files, or numbers of held-out items, as a model input (2, ...) with their conditions."""
    import torch

    from flows.family import load_examples
    from formats.images import read_image

    shape = space.net.cfg.shape
    ex = None
    xs, labels = [], []
    for ref in refs:
        if ref.isdigit():
            ex = ex or load_examples(space.config["data"]["data"], shape[-1])
            if int(ref) >= len(ex.val):
                raise ValueError(f"{ref}: the held-out set has {len(ex.val)} items (0..{len(ex.val) - 1})")
            i = ex.val[int(ref)]
            xs.append(ex.x[i])
            labels.append(None if ex.labels is None else int(ex.labels[i]))
        else:
            from PIL import Image

            img = read_image(Path(ref)).pixels                # float (H, W, C) in [0, 1]; one clear line if bad
            gray = img.mean(-1) if shape[0] == 1 else img.transpose(2, 0, 1)
            pil = Image.fromarray((np.atleast_3d(gray if shape[0] == 1 else gray.transpose(1, 2, 0)).squeeze() * 255
                                   ).round().astype(np.uint8))
            small = np.asarray(pil.resize((shape[-1], shape[-2]), Image.Resampling.LANCZOS), np.float32) / 255
            xs.append(small[None] if shape[0] == 1 else small.transpose(2, 0, 1))
            labels.append(None)
    x = torch.from_numpy(np.stack(xs).astype(np.float32)).view(2, *shape)
    cond = None
    if space.net.cfg.kind == "cvae":
        if None in labels:
            raise ValueError("a cvae interpolates held-out items (their labels are its conditions): give numbers")
        cond = torch.tensor(labels)[:, None]
    return x, cond, labels


def _cell(pics: list[np.ndarray]) -> int:
    """Small items (8x8 digits) scaled up to be seen; levels and piano rolls kept as drawn."""
    side = max(max(p.shape[:2]) for p in pics)
    return 64 if side < 64 else 0


def _cond_list(space: Space):
    return None if space.cond is None else space.cond[0].tolist()
