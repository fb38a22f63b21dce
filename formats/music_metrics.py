"""Symbolic-music metrics on token rolls (formats.music), numpy only. Definitions: shared/notes/music.md, table F.

Per roll (voices, steps):  MuseGAN (Dong et al., AAAI 2018) empty-bar rate, used pitch classes per bar,
qualified-note rate, tonal distance (Harte et al. 2006 tonal centroid); polyphonicity; in-scale rate;
a Krumhansl-Kessler key estimate. Per set: Yang & Lerch (2020) overlapped area (OA) and KL divergence of the
intra-set distance distribution (real vs real) and the inter-set one (real vs generated), each smoothed by a
Gaussian KDE and evaluated on one shared grid (mgeval used two grids: a quirk we do not copy).
"""

from __future__ import annotations

import numpy as np

from formats.music import OFFSET, STEPS_PER_BEAT, roll_to_notes, sounding

# Note-length classes on the 16th grid, in steps: whole, half, quarter, 8th, 16th, dotted half, dotted quarter,
# dotted 8th, dotted 16th, half / quarter / 8th triplets (Yang & Lerch's 12 classes)
LENGTH_CLASSES = np.array([16, 8, 4, 2, 1, 12, 6, 3, 1.5, 16 / 3, 8 / 3, 4 / 3])
MAJOR = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], dtype=bool)
# Krumhansl & Kessler (1982) probe-tone profiles, C major / C minor
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


# ---------------------------------------------------------------- per roll

def pitch_class_histogram(roll: np.ndarray, lo: int) -> np.ndarray:
    """12 bins, note counts (Yang & Lerch PCH), normalised to sum 1 (zeros for a silent roll)."""
    pcs = roll[roll >= OFFSET] - OFFSET + lo
    h = np.bincount(pcs % 12, minlength=12).astype(float)
    return h / max(1.0, h.sum())


def note_length_histogram(roll: np.ndarray, lo: int) -> np.ndarray:
    """12 bins (LENGTH_CLASSES, nearest on a log scale; longer than a whole note counts as whole), normalised."""
    d = roll_to_notes(roll, lo)[:, 2].astype(float)
    h = np.zeros(12)
    if len(d):
        cls = np.abs(np.log(np.minimum(d, 16)[:, None] / LENGTH_CLASSES[None])).argmin(1)
        h = np.bincount(cls, minlength=12).astype(float)
    return h / max(1.0, h.sum())


def pitch_range(roll: np.ndarray, lo: int) -> float:
    """Highest - lowest pitch in semitones (PR); 0 for a silent roll."""
    p = roll[roll >= OFFSET]
    return float(p.max() - p.min()) if p.size else 0.0


def mean_interval(roll: np.ndarray, lo: int) -> float:
    """Mean absolute interval between consecutive notes of each voice, semitones (PI)."""
    notes = roll_to_notes(roll, lo)
    gaps = [np.abs(np.diff(notes[notes[:, 0] == v, 3])) for v in range(roll.shape[0])]
    gaps = np.concatenate(gaps) if gaps else np.zeros(0)
    return float(gaps.mean()) if gaps.size else 0.0


def empty_bar_rate(roll: np.ndarray, steps_per_bar: int = 16) -> float:
    """Share of bars (of every voice) in which nothing sounds (MuseGAN EB)."""
    bars = (sounding(roll, 0) >= 0)[:, : roll.shape[1] // steps_per_bar * steps_per_bar]
    bars = bars.reshape(roll.shape[0], -1, steps_per_bar).any(-1)       # (voices, bars)
    return float(1 - bars.mean()) if bars.size else 0.0


def used_pitch_classes(roll: np.ndarray, lo: int, steps_per_bar: int = 16) -> float:
    """Distinct pitch classes sounding per bar, all voices together, mean over non-empty bars (MuseGAN UPC)."""
    p = sounding(roll, lo)
    n = roll.shape[1] // steps_per_bar
    counts = []
    for b in range(n):
        seg = p[:, b * steps_per_bar:(b + 1) * steps_per_bar]
        pcs = np.unique(seg[seg >= 0] % 12)
        if pcs.size:
            counts.append(pcs.size)
    return float(np.mean(counts)) if counts else 0.0


def qualified_note_rate(roll: np.ndarray, lo: int, min_steps: int = 2) -> float:
    """Share of notes lasting at least `min_steps` 16ths (MuseGAN QN; 2 = an 8th on this grid)."""
    d = roll_to_notes(roll, lo)[:, 2]
    return float((d >= min_steps).mean()) if d.size else 0.0


def polyphonicity(roll: np.ndarray, lo: int) -> float:
    """Share of steps with more than 2 pitches sounding (bMuseGAN PP)."""
    return float(((sounding(roll, lo) >= 0).sum(0) > 2).mean())


def chroma(roll: np.ndarray, lo: int) -> np.ndarray:
    """Duration-weighted pitch-class histogram (12,) over all voices (sounding steps)."""
    p = sounding(roll, lo)
    return np.bincount(p[p >= 0] % 12, minlength=12).astype(float)


def best_major_scale(roll: np.ndarray, lo: int) -> int:
    """Tonic (0-11) of the major scale holding the most sounding note-steps."""
    c = chroma(roll, lo)
    return int(np.argmax([c[np.roll(MAJOR, t)].sum() for t in range(12)]))


def in_scale_rate(roll: np.ndarray, lo: int) -> float:
    """Share of sounding note-steps inside the best-fitting major scale (MuseGAN code / MusPy)."""
    c = chroma(roll, lo)
    if not c.sum():
        return 0.0
    return float(max(c[np.roll(MAJOR, t)].sum() for t in range(12)) / c.sum())


def estimate_key(roll: np.ndarray, lo: int) -> tuple[int, int]:
    """(tonic 0-11, mode 0 = major / 1 = minor) by correlation of the duration-weighted chroma with the
    Krumhansl-Kessler profiles; (0, 0) for a silent roll."""
    return tuple(int(v) for v in estimate_keys(np.asarray(roll)[None], lo)[0])


def estimate_keys(rolls: np.ndarray, lo: int) -> np.ndarray:
    """estimate_key for a batch (N, voices, steps) at once -> (N, 2) int64 [tonic, mode]."""
    p = sounding(rolls, lo)                                                    # (N, V, T)
    n = len(p)
    c = np.zeros((n, 12))
    idx = np.nonzero(p >= 0)
    np.add.at(c, (idx[0], p[idx] % 12), 1)                                     # (N, 12) chroma
    profiles = np.stack([np.roll(prof, t) for prof in (KK_MAJOR, KK_MINOR) for t in range(12)])   # (24, 12)
    cz = c - c.mean(1, keepdims=True)
    pz = profiles - profiles.mean(1, keepdims=True)
    denom = np.linalg.norm(cz, axis=1, keepdims=True) * np.linalg.norm(pz, axis=1)[None]
    r = np.where(denom > 0, cz @ pz.T / np.maximum(denom, 1e-12), -np.inf)    # (N, 24) Pearson r
    best = r.argmax(1)
    best[~np.isfinite(r).any(1)] = 0
    return np.stack([best % 12, best // 12], 1).astype(np.int64)


def key_name(tonic: int, mode: int) -> str:
    return NAMES[tonic] + ("m" if mode else "")


def _tonal_centroid(c: np.ndarray) -> np.ndarray:
    """(..., 12) L1-normalised chroma -> (..., 6) tonal centroid: fifths (r 1), minor thirds (r 1), major
    thirds (r 0.5), Harte, Sandler & Gasser 2006."""
    lpc = np.arange(12)
    phi = np.stack([np.sin(lpc * 7 * np.pi / 6), np.cos(lpc * 7 * np.pi / 6),
                    np.sin(lpc * 3 * np.pi / 2), np.cos(lpc * 3 * np.pi / 2),
                    0.5 * np.sin(lpc * 2 * np.pi / 3), 0.5 * np.cos(lpc * 2 * np.pi / 3)])   # (6, 12)
    return c @ phi.T


def tonal_distance(a: np.ndarray, b: np.ndarray, lo: int) -> float:
    """MuseGAN TD between two single-voice rolls (1, steps): per beat, each voice's L1-normalised chroma ->
    tonal centroid; mean Euclidean distance over beats where both sound. NaN if there are none."""
    pa, pb = sounding(a, lo)[0], sounding(b, lo)[0]
    beats = min(len(pa), len(pb)) // STEPS_PER_BEAT
    dists = []
    for i in range(beats):
        span = slice(i * STEPS_PER_BEAT, (i + 1) * STEPS_PER_BEAT)
        ca = np.bincount(pa[span][pa[span] >= 0] % 12, minlength=12).astype(float)
        cb = np.bincount(pb[span][pb[span] >= 0] % 12, minlength=12).astype(float)
        if ca.sum() and cb.sum():
            dists.append(np.linalg.norm(_tonal_centroid(ca / ca.sum()) - _tonal_centroid(cb / cb.sum())))
    return float(np.mean(dists)) if dists else float("nan")


def reconstruction_accuracy(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Share of (voice, step) cells whose token equals the input's (MusicVAE's per-step accuracy)."""
    return float((np.asarray(x) == np.asarray(x_hat)).mean())


def copy_rate(generated: np.ndarray, training: np.ndarray) -> float:
    """Share of generated windows (N, voices, steps) identical to some training window."""
    seen = {w.tobytes() for w in np.ascontiguousarray(training, dtype=np.int64)}
    return float(np.mean([w.tobytes() in seen for w in np.ascontiguousarray(generated, dtype=np.int64)]))


def roll_stats(roll: np.ndarray, lo: int, steps_per_bar: int = 16) -> dict[str, float]:
    """The per-roll metrics in one dict (what `aeflow music stats` prints per file). TD: soprano vs bass
    (first and last voice) when there are several voices."""
    tonic, mode = estimate_key(roll, lo)
    out = {"steps": roll.shape[1], "notes": len(roll_to_notes(roll, lo)), "empty_bars": empty_bar_rate(roll, steps_per_bar),
           "upc": used_pitch_classes(roll, lo, steps_per_bar), "qualified": qualified_note_rate(roll, lo),
           "in_scale": in_scale_rate(roll, lo), "pitch_range": pitch_range(roll, lo),
           "interval": mean_interval(roll, lo), "polyphony": polyphonicity(roll, lo), "key": key_name(tonic, mode)}
    if roll.shape[0] > 1:
        out["tonal_distance"] = tonal_distance(roll[:1], roll[-1:], lo)
    return out


# ---------------------------------------------------------------- per set: Yang & Lerch

FEATURES = {                     # name -> per-roll feature (a vector or a scalar)
    "pitch_classes": pitch_class_histogram,
    "note_lengths": note_length_histogram,
    "pitch_range": pitch_range,
    "interval": mean_interval,
}


def _features(rolls, lo: int, name: str) -> np.ndarray:
    return np.array([np.atleast_1d(FEATURES[name](r, lo)) for r in rolls], dtype=float)   # (N, D)


def _kde(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE with Scott's bandwidth (scipy.stats.gaussian_kde's default) on an even `grid`, by binning the
    samples onto the grid and convolving with the kernel (40,000 inter-set distances: exact sums would take
    seconds per feature). Unnormalised; the caller normalises."""
    bw = max(samples.std(ddof=1) if len(samples) > 1 else 0.0, 1e-3) * len(samples) ** (-1 / 5)
    dx = grid[1] - grid[0]
    counts = np.histogram(samples, bins=len(grid), range=(grid[0] - dx / 2, grid[-1] + dx / 2))[0].astype(float)
    half = min(int(np.ceil(4 * bw / dx)), len(grid) // 2 - 1)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / bw) ** 2)
    return np.convolve(counts, kernel, mode="same")


def overlap(real: list[np.ndarray], generated: list[np.ndarray], lo: int, max_n: int = 200,
            seed: int = 0) -> dict[str, dict[str, float]]:
    """Yang & Lerch per feature: {"oa": overlapped area of the intra-set (real-real) and inter-set
    (real-generated) distance PDFs, 1 = indistinguishable; "kld": KL(intra || inter)}. At most `max_n` rolls of
    each set (a seeded subset), as in the paper's protocol; distances are Euclidean between feature vectors."""
    rng = np.random.default_rng(seed)
    pick = lambda s: [s[i] for i in sorted(rng.choice(len(s), min(max_n, len(s)), replace=False))]  # noqa: E731
    real, generated = pick(real), pick(generated)
    out = {}
    for name in FEATURES:
        fr, fg = _features(real, lo, name), _features(generated, lo, name)
        d_intra = np.linalg.norm(fr[:, None] - fr[None], axis=-1)[np.triu_indices(len(fr), 1)]
        d_inter = np.linalg.norm(fr[:, None] - fg[None], axis=-1).ravel()
        hi = max(d_intra.max(initial=0), d_inter.max(initial=0))
        grid = np.linspace(-0.1 * hi - 1e-3, 1.1 * hi + 1e-3, 1000)
        p, q = _kde(d_intra, grid), _kde(d_inter, grid)
        dx = grid[1] - grid[0]
        p_n, q_n = p / (p.sum() * dx), q / (q.sum() * dx)
        oa = float(np.minimum(p_n, q_n).sum() * dx)
        kld = float(np.sum(p_n * np.log((p_n + 1e-12) / (q_n + 1e-12))) * dx)
        out[name] = {"oa": round(oa, 4), "kld": round(max(0.0, kld), 4)}
    return out


def set_stats(rolls: list[np.ndarray], lo: int, steps_per_bar: int = 16) -> dict[str, float]:
    """Mean of the numeric per-roll metrics over a set (NaN tonal distances skipped)."""
    rows = [roll_stats(r, lo, steps_per_bar) for r in rolls]
    keys = [k for k in rows[0] if k != "key"] if rows else []
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
