"""Figures of latent spaces, drawn with Pillow: a 2-D scatter coloured by label with a legend and axis
values, and a grid of decoded items with the latent value of each row and column. PNG bytes out."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# matplotlib's tab10, then tab20's light halves: 20 classes tell apart
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
           (219, 219, 141), (158, 218, 229)]
INK, GRID = (40, 40, 40), (225, 225, 225)


def _font(size: int = 13):
    return ImageFont.load_default(size=size)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values (1, 2 or 5 times a power of ten apart) inside [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    step = min((m * 10 ** np.floor(np.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    ticks = np.round(np.arange(np.ceil(lo / step), np.floor(hi / step) + 1) * step, 12)
    return [float(v) + 0.0 for v in ticks]                  # round(): no 1.4e-17 for 0; + 0.0: no -0


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def scatter(xy: np.ndarray, labels: np.ndarray | None = None, names: list[str] | None = None, title: str = "",
            axes: tuple[str, str] = ("dim 1", "dim 2"), size: int = 720, legend_title: str = "") -> bytes:
    """Points (N, 2), one colour per label (ints 0..K-1, `names[k]` in the legend); more than 20 labels or
    none: one colour. The axes carry their values; the legend sits right of the plot."""
    xy = np.asarray(xy, np.float64)
    labels = np.zeros(len(xy), int) if labels is None else np.asarray(labels).astype(int)
    kinds = np.unique(labels)
    categorical = names is not None and len(kinds) <= len(PALETTE)
    font, small = _font(14), _font(12)
    left, top, bottom = 64, 34, 48
    legend_w = 24 + max((int(small.getlength(n)) for n in (names or [])), default=0) if categorical else 0
    legend_w = max(legend_w, int(small.getlength(legend_title)) + 10) if categorical else 0
    w, h = size, size - 80                                   # the plot area
    im = Image.new("RGB", (left + w + 16 + legend_w + 10, top + h + bottom), "white")
    d = ImageDraw.Draw(im)
    lo, hi = xy.min(0), xy.max(0)
    pad = np.where(hi > lo, (hi - lo) * 0.04, 1.0)
    lo, hi = lo - pad, hi + pad
    to_px = lambda p: (left + (p[..., 0] - lo[0]) / (hi[0] - lo[0]) * w,               # noqa: E731
                       top + h - (p[..., 1] - lo[1]) / (hi[1] - lo[1]) * h)
    for v in nice_ticks(lo[0], hi[0], 6):
        x = left + (v - lo[0]) / (hi[0] - lo[0]) * w
        d.line([(x, top), (x, top + h)], fill=GRID)
        d.text((x, top + h + 4), _fmt(v), fill=INK, font=small, anchor="mt")
    for v in nice_ticks(lo[1], hi[1], 6):
        y = top + h - (v - lo[1]) / (hi[1] - lo[1]) * h
        d.line([(left, y), (left + w, y)], fill=GRID)
        d.text((left - 5, y), _fmt(v), fill=INK, font=small, anchor="rm")
    d.rectangle([left, top, left + w, top + h], outline=INK)
    px, py = to_px(xy)
    r = 2 if len(xy) > 2000 else 3
    order = np.random.default_rng(0).permutation(len(xy))      # no class painted wholly over another
    for i in order:
        colour = PALETTE[labels[i] % len(PALETTE)] if categorical else PALETTE[0]
        d.ellipse([px[i] - r, py[i] - r, px[i] + r, py[i] + r], fill=colour)
    d.text((left + w / 2, 8), title, fill=INK, font=font, anchor="mt")
    d.text((left + w / 2, top + h + 26), axes[0], fill=INK, font=font, anchor="mt")
    d.text((14, top + h / 2), axes[1], fill=INK, font=font, anchor="mm")   # short names: horizontal reads best
    if categorical:
        x0, y = left + w + 16, top
        d.text((x0, y), legend_title, fill=INK, font=small)
        for k in kinds:
            y += 18
            d.rectangle([x0, y + 2, x0 + 10, y + 12], fill=PALETTE[k % len(PALETTE)])
            d.text((x0 + 16, y), names[k], fill=INK, font=small)
    return _png(im)


def grid(cells: list[list[np.ndarray]], col_values: list[str], row_values: list[str], title: str = "",
         axes: tuple[str, str] = ("", ""), cell: int = 0, gap: int = 2) -> bytes:
    """Decoded items (uint8 (H, W) or (H, W, 3), one list per row) in a table whose columns and rows are
    labelled with their latent values; axes name what varies along each. `cell`: scale every item to fit so
    many pixels (0: as they are, nearest neighbour)."""
    font, small = _font(14), _font(12)
    pics = [[Image.fromarray(c).convert("RGB") for c in row] for row in cells]
    if cell:
        pics = [[p.resize((max(1, round(p.width * cell / max(p.size))), max(1, round(p.height * cell / max(p.size)))),
                          Image.Resampling.NEAREST) for p in row] for row in pics]
    cw = max(p.width for row in pics for p in row)
    ch = max(p.height for row in pics for p in row)
    left = 16 + max([int(small.getlength(v)) for v in row_values] + [0]) + (18 if axes[1] else 0)
    top = 28 + 16 + (18 if axes[0] else 0)
    im = Image.new("RGB", (left + len(pics[0]) * (cw + gap) + 8, top + len(pics) * (ch + gap) + 8), "white")
    d = ImageDraw.Draw(im)
    d.text((im.width / 2, 6), title, fill=INK, font=font, anchor="mt")
    if axes[0]:
        d.text((left + len(pics[0]) * (cw + gap) / 2, 26), axes[0], fill=INK, font=small, anchor="mt")
    for j, v in enumerate(col_values):
        d.text((left + j * (cw + gap) + cw / 2, top - 4), v, fill=INK, font=small, anchor="mb")
    if axes[1]:
        d.text((4, top - 4), axes[1], fill=INK, font=small, anchor="lb")
    for i, row in enumerate(pics):
        y = top + i * (ch + gap)
        d.text((left - 6, y + ch / 2), row_values[i], fill=INK, font=small, anchor="rm")
        for j, p in enumerate(row):
            im.paste(p, (left + j * (cw + gap) + (cw - p.width) // 2, y + (ch - p.height) // 2))
    return _png(im)


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
