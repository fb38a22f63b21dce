"""Time series in CSV files (NAB's layout: `timestamp,value`), numpy and Pillow only.

    read_series   a CSV -> timestamps, values and the bad rows (line number + reason); the rest is used
    regularise    the usable points -> one value per median step (short gaps interpolated, long ones joined
                  or refused), and each point's place on that grid: said in a report, never silent
    windows / per_point   windows over a grid <-> one number per point
    events        flagged points -> events (runs closer than `gap` points merged); `match_events` scores
                  them against labelled windows (tp / fp / fn)
    plot_series   signal, score, threshold, events and labelled windows as one PNG
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from formats.files import Refused, open_regular


class BadSeries(ValueError):
    """A series file that cannot be used at all (one line naming the file)."""


@dataclass(frozen=True)
class BadRow:
    line: int                 # 1-based line number in the file (the header is line 1)
    reason: str


@dataclass
class Series:
    name: str                 # the file's stem
    stamps: list[str]         # the input's own timestamp text of each usable row
    seconds: np.ndarray       # (N,) float64 seconds since 1970 (UTC when the file says nothing)
    values: np.ndarray        # (N,) float64
    lines: np.ndarray         # (N,) line number of each usable row
    bad: list[BadRow] = field(default_factory=list)


def parse_time(text: str) -> float | None:
    """ISO 8601 (`2015-07-10 14:24:00`, `...T14:24:00.000000`, a trailing Z) or plain seconds since 1970;
    None when it is neither."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text) if text.replace(".", "", 1).lstrip("-").isdigit() else \
            np.datetime64(text[:-1] if text.endswith("Z") else text, "ms").astype(np.int64) / 1000.0
    except ValueError:
        return None


def read_series(path: str | Path, column: str = "value", time_column: str | None = None) -> Series:
    """Read one CSV with a header. The timestamp is the column named `timestamp` (or `time_column`, else the
    first); the values are `column`. Rows that cannot be used are kept out and listed with their line number:
    missing or non-numeric value, unparseable timestamp, a timestamp equal to (duplicated) or earlier than
    (out of order) the last usable one. Raises BadSeries when nothing is usable."""
    path = Path(path)
    try:
        with open_regular(path) as fh:
            text = fh.read().decode("utf-8-sig")
    except Refused as e:
        raise BadSeries(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise BadSeries(f"{path}: not UTF-8 text (byte {e.start})") from None
    rows = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(rows, [])]
    if not any(header):
        raise BadSeries(f"{path}: empty file (a header line such as timestamp,value is expected)")
    if column not in header:
        other = next((sep for sep in ";\t|" if len(header) == 1 and sep in header[0]), None)
        raise BadSeries(f"{path}: " + (f"fields separated by {other!r}, not commas" if other else
                                       f"no column {column!r} in the header ({', '.join(header)}); pick one with --column"))
    t_col = header.index(time_column) if time_column else header.index("timestamp") if "timestamp" in header else 0
    if time_column and time_column not in header:
        raise BadSeries(f"{path}: no time column {time_column!r} in the header ({', '.join(header)})")
    v_col = header.index(column)
    stamps, seconds, values, lines, bad = [], [], [], [], []
    last = -math.inf
    for line, row in enumerate(rows, start=2):
        if not row or not any(c.strip() for c in row):
            continue                                                   # a blank line is nothing, not a bad row
        if len(row) > len(header):               # "t,41,2": a decimal comma would be read as 41
            bad.append(BadRow(line, f"{len(row)} fields, the header has {len(header)}"))
            continue
        stamp = row[t_col].strip() if t_col < len(row) else ""
        raw = row[v_col].strip() if v_col < len(row) else ""
        if not stamp or not raw:
            bad.append(BadRow(line, f"missing {'timestamp' if not stamp else column}"))
            continue
        t = parse_time(stamp)
        if t is None:
            bad.append(BadRow(line, f"unparseable timestamp {stamp[:40]!r}"))
            continue
        try:
            v = float(raw)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            bad.append(BadRow(line, f"non-numeric {column} {raw[:40]!r}"))
            continue
        if t <= last:
            bad.append(BadRow(line, f"{'duplicated' if t == last else 'out-of-order'} timestamp {stamp} "
                                    f"(after {stamps[-1]} on line {lines[-1]})"))
            continue
        last = t
        stamps.append(stamp)
        seconds.append(t)
        values.append(v)
        lines.append(line)
    if not values:
        why = f"{len(bad)} bad row(s), the first on line {bad[0].line}: {bad[0].reason}" if bad else "no data rows"
        raise BadSeries(f"{path}: nothing usable ({why})")
    return Series(path.stem, stamps, np.array(seconds), np.array(values), np.array(lines, np.int64), bad)


@dataclass
class Grid:
    values: np.ndarray        # (M,) float64, one value per step
    index: np.ndarray         # (N,) the grid position of each point of the series
    step_s: float             # the median step, seconds
    report: dict              # what was done: filled, merged, joined gaps, off-grid points


def regularise(series: Series, max_fill: int = 12, long_gaps: str = "join") -> Grid:
    """Put the series on its median step. Each point goes to its nearest step; points sharing a step are
    averaged ("merged"); up to `max_fill` missing steps in a row are interpolated linearly ("filled"); a longer
    gap is closed up ("join": the steps either side become neighbours, each such gap listed with its line) or
    refused (`long_gaps="refuse"`: BadSeries naming the first). The report says how many of each."""
    t, v = series.seconds, series.values
    if len(t) < 2:
        return Grid(v.copy(), np.zeros(len(t), np.int64), 0.0, {"step_s": 0.0, "filled": 0, "merged": 0,
                                                                  "joined": [], "off_grid": 0})
    step = float(np.median(np.diff(t)))
    slot = np.rint((t - t[0]) / step).astype(np.int64)
    uniq, inv = np.unique(slot, return_inverse=True)
    vals = np.bincount(inv, v) / np.bincount(inv)
    missing = np.diff(uniq) - 1                                       # steps missing before each next slot
    long = missing > max_fill
    joined = [{"line": int(series.lines[np.searchsorted(slot, uniq[i + 1])]),
               "at": series.stamps[np.searchsorted(slot, uniq[i + 1])], "missing_steps": int(missing[i])}
              for i in np.flatnonzero(long)]
    if joined and long_gaps == "refuse":
        g = joined[0]
        raise BadSeries(f"{series.name}: a gap of {g['missing_steps']} steps of {step:g} s before line {g['line']} "
                        f"({g['at']}; {len(joined)} such gap(s) longer than {max_fill} steps); split the file there "
                        f"or let long gaps be joined")
    pos = np.r_[0, np.cumsum(np.where(long, 1, missing + 1))]         # grid position of each used slot
    grid = np.interp(np.arange(pos[-1] + 1), pos, vals)
    off = np.abs((t - t[0]) / step - slot) > 0.25
    report = {"step_s": step, "filled": int(missing[~long].sum()), "merged": int(len(t) - len(uniq)),
              "joined": joined, "off_grid": int(off.sum())}
    return Grid(grid, pos[inv], step, report)


# ---------------------------------------------------------------- windows <-> points

def window_starts(length: int, window: int, hop: int) -> np.ndarray:
    """Starts of windows of `window` steps every `hop` steps, the last one flush with the end (every step is
    covered). A series shorter than a window has none."""
    if length < window:
        return np.zeros(0, np.int64)
    starts = np.arange(0, length - window + 1, hop)
    return starts if starts[-1] == length - window else np.r_[starts, length - window]


def windows(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """(M,) -> (len(starts), window), a copy."""
    return x[starts[:, None] + np.arange(window)]


def per_point(values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(n, window) numbers per window step -> (length,) their mean over the windows covering each step."""
    window = values.shape[1]
    idx = (starts[:, None] + np.arange(window)).ravel()
    return np.bincount(idx, values.ravel(), length) / np.maximum(np.bincount(idx, minlength=length), 1)


def moving_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Centred mean over k neighbouring steps (fewer at the ends); k = 1 returns x."""
    if k <= 1:
        return x
    c = np.r_[0.0, np.cumsum(x)]
    i = np.arange(len(x))
    lo, hi = np.maximum(i - k // 2, 0), np.minimum(i - k // 2 + k, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


# ---------------------------------------------------------------- events

def events(flags: np.ndarray, gap: int = 12) -> list[tuple[int, int]]:
    """Flagged points -> [(first, last)] index pairs; flags whose index gap is <= `gap` are one event."""
    idx = np.flatnonzero(flags)
    if not len(idx):
        return []
    cuts = np.flatnonzero(np.diff(idx) > gap)
    return [(int(a), int(b)) for a, b in zip(idx[np.r_[0, cuts + 1]], idx[np.r_[cuts, len(idx) - 1]])]


def label_segments(seconds: np.ndarray, windows: list[list[str]]) -> list[tuple[int, int]]:
    """Labelled windows [[start, end], ...] (inclusive timestamps; NAB's `.000000` suffix is ignored) -> the
    (first, last) index of the points inside each; a window holding no point is left out."""
    out = []
    for start, end in windows:
        a, b = parse_time(start[:19]), parse_time(end[:19])
        inside = np.flatnonzero((seconds >= a) & (seconds <= b))
        if len(inside):
            out.append((int(inside[0]), int(inside[-1])))
    return out


def match_events(found: list[tuple[int, int]], truth: list[tuple[int, int]]) -> tuple[int, int, int]:
    """(tp, fp, fn): labelled windows overlapped by an event, events overlapping no window, windows missed."""
    hit = lambda a, b, segs: any(a <= d and c <= b for c, d in segs)       # noqa: E731
    tp = sum(hit(c, d, found) for c, d in truth)
    fp = sum(not hit(a, b, truth) for a, b in found)
    return tp, fp, len(truth) - tp


# ---------------------------------------------------------------- the picture

COLOURS = {"signal": (31, 119, 180), "score": (60, 60, 60), "threshold": (214, 39, 40), "event": (255, 187, 120),
           "label": (152, 223, 138)}


def _trace(draw: ImageDraw.ImageDraw, y: np.ndarray, box: tuple[int, int, int, int], lo: float, hi: float,
           colour) -> None:
    """A line through y in box (x0, y0, x1, y1); a column per pixel draws the min-max of the points it holds
    and the last point of the column before (the line stays joined), so a one-point spike in 20,000 stays
    visible."""
    x0, y0, x1, y1 = box
    width = x1 - x0
    col = (np.arange(len(y)) * width // max(len(y), 1)).clip(0, width - 1)
    scale = lambda v: y1 - (np.clip(v, lo, hi) - lo) / max(hi - lo, 1e-12) * (y1 - y0)   # noqa: E731
    if len(y) <= width:
        draw.line([(x0 + c, scale(v)) for c, v in zip(col, y)], fill=colour, width=1)
        return
    mins = np.full(width, np.inf)
    maxs = np.full(width, -np.inf)
    np.minimum.at(mins, col, y)
    np.maximum.at(maxs, col, y)
    last = np.r_[np.flatnonzero(np.diff(col)), len(y) - 1]              # each used column's last point
    used = col[last]
    mins[used[1:]] = np.minimum(mins[used[1:]], y[last[:-1]])
    maxs[used[1:]] = np.maximum(maxs[used[1:]], y[last[:-1]])
    for c in used:
        draw.line([(x0 + c, scale(maxs[c])), (x0 + c, scale(mins[c]))], fill=colour)


def plot_series(name: str, values: np.ndarray, score: np.ndarray, threshold: float,
                found: list[tuple[int, int]], labelled: list[tuple[int, int]] | None = None,
                width: int = 1200) -> bytes:
    """PNG: the signal (labelled windows: a green band on top; events shaded orange) above the score and its threshold (red;
    the score axis stops at 3x the threshold so that a spike does not flatten the rest)."""
    font = ImageFont.load_default_imagefont()
    pad, top_h, bot_h = 8, 200, 120
    img = Image.new("RGB", (width, pad * 5 + 12 + top_h + bot_h), "white")
    draw = ImageDraw.Draw(img)
    n = len(values)
    top = (pad, pad * 2 + 12, width - pad, pad * 2 + 12 + top_h)
    bot = (pad, top[3] + pad * 2, width - pad, top[3] + pad * 2 + bot_h)
    xpix = lambda i: top[0] + i * (top[2] - top[0]) / max(n, 1)         # noqa: E731
    # events shade both panels; labelled windows are a band along the top of the signal, drawn last (visible
    # where an event covers them too)
    for segs, colour, (ya, yb) in ((found, COLOURS["event"], (top[1], bot[3])),
                                   (labelled or [], COLOURS["label"], (top[1], top[1] + 10))):
        for a, b in segs:
            draw.rectangle([xpix(a), ya, max(xpix(b + 1), xpix(a) + 1), yb], fill=colour)
    for box in (top, bot):
        draw.rectangle(box, outline=(180, 180, 180))
    lo, hi = float(values.min()), float(values.max())
    _trace(draw, values, top, lo - 0.05 * (hi - lo + 1e-12), hi + 0.05 * (hi - lo + 1e-12), COLOURS["signal"])
    s_hi = 3 * threshold if threshold > 0 else float(score.max()) or 1.0
    _trace(draw, score, bot, 0.0, s_hi, COLOURS["score"])
    ty = bot[3] - min(threshold / s_hi, 1.0) * (bot[3] - bot[1])
    for x in range(bot[0], bot[2], 8):
        draw.line([(x, ty), (min(x + 4, bot[2]), ty)], fill=COLOURS["threshold"])
    draw.text((pad, pad), f"{name}: {n} points, {len(found)} event(s)"
              + (f", {len(labelled)} labelled window(s) (green band)" if labelled is not None else "")
              + f"; score (axis to 3x threshold {threshold:.4g})", fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
