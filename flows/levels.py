"""Game levels: ingest VGLC-format levels into training units, train a (conditional) VAE on them, sample
playable levels (windows, or full-length levels from a latent walk), interpolate, check any level files.

Stages (content-addressed, flows/stages.py): `outputs/levels-ingest/<game>-<source>-<key12>/` holds the
units and the originals' checker pass rates; training goes through flows.train.train_windows. Jobs
(`sample`, `interpolate`, `check`) write into the user's folder: VGLC text + PNG per level, a contact
sheet and report.json. Plain functions: their Prefect flows are in flows/pipelines.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from flows.stages import Stage, StageResult, content_key, open_stage, run_stage
from formats.levels import (BLEND_SHAPE, BLENDS, GAMES, BadLevel, annotation_copies, contact_sheet, copies, cut_units,
                            diversity, game_spec, game_tile_shares, get_legend, grid_to_level, level_files,
                            mario_gpt_file, mario_gpt_levels, novelty, pad_top, png_bytes, read_level, remap,
                            render_level, tpkl, wilson, windows, zelda_rooms)
from formats.playability import (AS_MARIO, CHECKERS, MARIO_SOLID, as_game, blend_playable, mario_pipes_ok,
                                 mario_playable, playable, zelda_check)
from models.checkpoints import write_bytes_atomic, write_json_atomic, write_report

VERSION = 2     # 2: full Mario levels start on the standable cells of the first columns (originals' rates change)
# The shipped Mario models (models/pretrained/) that "auto" names: `sample` draws whole columns (pipes, stairs and
# brick blocks come out whole; tile patterns 30-40x closer to the corpus than the cell VAE's), `sample --cond` the
# column cvae, and `interpolate` encodes with the cell VAE, whose z holds a window (0.994 of tiles, the column
# VAE's 0.88). Each with the training call that remakes it if it is missing.
SAMPLE_MODEL, COND_MODEL, INTERPOLATE_MODEL = "mario-columns", "mario-cvae", "mario-columns"
SHIPPED = {"mario-columns": {"units": "columns"}, "mario-cvae": {"units": "columns", "kind": "cvae", "playable_only": False},
           "mario-vae": {"playable_only": False}}


# Cell conditions for a cvae on Mario windows (notes: MarioGPT prompts; thresholds set at the corpus'
# quartiles of 14 x 28 windows): counts -> none / few / some / many.
COND_NAMES = ("enemies", "pipes", "gaps")
COND_LEVELS = ("none", "few", "some", "many")
COND_EDGES = {"enemies": (1, 2, 4), "pipes": (1, 2, 4), "gaps": (1, 4, 8)}   # bucket i holds counts < edge i


def mario_features(grids: np.ndarray) -> dict[str, np.ndarray]:
    """Per window: enemies (E tiles), pipes (pipe tops `<`), gaps (bottom-row columns without ground)."""
    legend = get_legend("mario")
    g = np.asarray(grids)
    return {"enemies": (g == legend.index("E")).sum((1, 2)), "pipes": (g == legend.index("<")).sum((1, 2)),
            "gaps": (~legend.mask(MARIO_SOLID)[g[:, -1]]).sum(1)}


def mario_conditions(grids: np.ndarray) -> np.ndarray:
    """(N, 3) bucket indices (enemies, pipes, gaps) in 0..3."""
    f = mario_features(grids)
    return np.stack([np.searchsorted(COND_EDGES[k], f[k], side="right") for k in COND_NAMES], 1).astype(np.int64)


def parse_cond(text: str | None) -> np.ndarray | None:
    """"enemies=many,pipes=some" -> (1, 3) bucket indices; -1 for a variable not named (fill_cond draws it)."""
    if not text:
        return None
    cond = {k: -1 for k in COND_NAMES}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in cond or value not in COND_LEVELS:
            raise ValueError(f"--cond {part!r}: use NAME=LEVEL with NAME in {', '.join(COND_NAMES)} and LEVEL in "
                             f"{', '.join(COND_LEVELS)}")
        cond[key] = COND_LEVELS.index(value)
    return np.array([[cond[k] for k in COND_NAMES]], dtype=np.int64)


# ---------------------------------------------------------------- ingest

def _sources(game: str, data: str | None) -> tuple[list[Path], str]:
    """Level files of a VGLC game folder (its processed/ subfolder when present), or the mario-gpt file."""
    if data is None:
        if game != "mario":
            raise ValueError(f"--data is needed for {game}: a VGLC game folder (e.g. ../shared/data/vglc/{game})")
        return [mario_gpt_file()], "mario-gpt"
    root = Path(data).expanduser()
    if not root.is_dir():
        raise (NotADirectoryError(f"{data}: is a file; --data takes the folder that holds them") if root.is_file()
               else FileNotFoundError(f"{data}: no such folder"))
    # processed/ here (../shared/data/vglc), Processed/ in a clone of TheVGLC ("Super Mario Bros/Processed")
    sub = next((root / n for n in ("processed", "Processed") if (root / n).is_dir()), None)
    folder = sub or root
    pattern = game_spec(game).pattern
    files = level_files(folder, pattern)
    if not files:
        raise ValueError(f"{folder}: no level files ({pattern})")
    return files, root.resolve().name


def ingest_levels(game: str = "mario", data: str | None = None, width: int | None = None,
                  refresh: bool = False) -> StageResult:
    """Read every level, cut units, score the originals with the game's checker (a cached stage).
    Bad files are listed in the manifest's `bad` with file, line and column; they never stop the stage."""
    if game in BLENDS:
        return ingest_blend(game, data, refresh)
    legend = get_legend(game)
    files, source = _sources(game, data)
    contents = tuple(content_key(f) for f in files)
    spec = game_spec(game, width)
    config = {"game": game, "width": width, "unit": spec.unit}
    if game not in GAMES:                      # a legend file: its content is part of the key, not its path
        config.update(game=legend.game, legend=legend.tiles)
    stage = Stage("levels-ingest", VERSION, f"{legend.game}-{source}-{width or ''}", config, contents=contents)

    def fill(tmp: Path) -> dict:
        read, bad = [], []                     # read: (name, grid, file)
        if source == "mario-gpt":
            read = [(name, grid, files[0]) for name, grid in mario_gpt_levels(files[0])]
        else:
            for f in files:
                try:
                    read.append((f.stem, read_level(f, legend), f))
                except BadLevel as e:
                    bad.append({"file": f.name, "reason": str(e)})
        levels, units, owner, level_ok = [], [], [], []
        for name, grid, f in read:
            try:
                u = cut_units(game, grid, width)
            except ValueError as e:            # a level of the wrong shape is a bad file, not the end of the stage
                bad.append({"file": f.name if f.stem == name else name, "reason": f"{f}: {e}"})
                continue
            i = len(levels)
            levels.append((name, grid))
            units.append(u)
            owner += [i] * len(u)
            if game == "mario":                    # full-level check (notes §4.1)
                level_ok.append({"level": name, "playable": bool(mario_playable(grid, legend, "level"))})
        shapes = [u.shape[1:] for u in units]
        if len(set(shapes)) > 1:               # a legend-file game's units must share one shape
            common = max(set(shapes), key=lambda sh: (shapes.count(sh), -shapes.index(sh)))
            if 2 * shapes.count(common) <= len(shapes):     # no shape most levels have: a question of --width
                raise ValueError(f"{data}: levels of different shapes {sorted(set(shapes))}; give --width to cut "
                                 "windows")
            keep = [j for j, sh in enumerate(shapes) if sh == common]   # the odd few are bad files
            for j, sh in enumerate(shapes):
                if sh != common:
                    bad.append({"file": levels[j][0], "reason": f"{levels[j][0]}: units of {sh[0]} x {sh[1]}; the "
                                f"other levels' are {common[0]} x {common[1]}"})
            owner = [keep.index(o) for o in owner if o in keep]
            levels, units = [levels[j] for j in keep], [units[j] for j in keep]
            level_ok = [level_ok[j] for j in keep] if level_ok else level_ok
        x = np.concatenate(units) if units else np.empty((0, *spec.shape), np.uint8)
        ok = check_units(game, x)
        np.save(tmp / "units.npy", x)                                       # (N, rows, cols) uint8
        np.save(tmp / "unit_level.npy", np.array(owner, dtype=np.int32))    # (N,) index into levels.json
        np.savez_compressed(tmp / "levels.npz", **{f"l{i:04d}": g for i, (_, g) in enumerate(levels)})
        write_json_atomic(tmp / "levels.json", [name for name, _ in levels])
        originals = {"units": len(x), "units_playable": int(ok.sum()),
                     "units_rate": round(float(ok.mean()), 4) if len(x) else None}
        if level_ok:
            originals.update(levels=len(level_ok), levels_playable=sum(r["playable"] for r in level_ok))
        return {"source": source, "data": str(Path(data).resolve()) if data else None, "levels": len(levels),
                "units": len(x), "distinct_units": len({u.tobytes() for u in x}), "shape": list(x.shape[1:]),
                "bad": bad, "originals": originals}

    return run_stage(stage, fill, refresh)


def blend_sources(game: str, data: str | None) -> tuple[str | None, str]:
    """--data of a blend: "FIRST_DIR,SECOND_DIR", or only the second game's folder (Mario then comes from its
    default corpus, the mario-gpt package)."""
    a, b = BLENDS[game]
    parts = [p.strip() for p in (data or "").split(",")]
    if not data or len(parts) > 2 or not all(parts):
        raise ValueError(f"--data for {game}: the {b} VGLC folder (e.g. ../shared/data/vglc/{b}; {a} from its "
                         f"default corpus), or two folders {a.upper()}_DIR,{b.upper()}_DIR")
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def ingest_blend(game: str, data: str | None, refresh: bool = False) -> StageResult:
    """Two games' units in one stage, for a cvae conditioned on the game (Sarkar et al. 2019/2020): each game
    ingested as usual (cached stages; Mario as 16-column windows), units remapped to the union legend and
    padded to 16 x 16 (Mario's 14 rows get 2 rows of sky on top). Writes what `load_ingest` reads, plus
    unit_game.npy: (N,) int64 game index (0: the first game). Levels are named "GAME/NAME"."""
    games, sources = BLENDS[game], blend_sources(game, data)
    widths = {"mario": BLEND_SHAPE[1]}                        # Kid Icarus: its own 16 x 16 vertical windows
    parts = [ingest_levels(g, d, widths.get(g), refresh) for g, d in zip(games, sources)]
    ups = [p.manifest for p in parts]
    stage = Stage("levels-ingest", VERSION, f"{game}-{'+'.join(m['source'] for m in ups)}",
                  {"game": game, "unit": "blend", "shape": list(BLEND_SHAPE)}, upstream=tuple(m["key"] for m in ups))

    def fill(tmp: Path) -> dict:
        units, owner, label, levels, originals = [], [], [], [], {}
        for i, (g, folder) in enumerate(zip(games, parts)):
            x, own, lv, _ = load_ingest(folder)
            u = remap(x, g, game)                                             # (N, rows, 16) union indices
            if u.shape[1:] != BLEND_SHAPE:
                u = pad_top(u, BLEND_SHAPE[0])                                # (N, 16, 16)
            rules = blend_playable(u, game)
            originals[g] = {"units": len(u), **{f"{k}_rule": int(v.sum()) for k, v in rules.items()},
                            "either": int((rules["mario"] | rules["kid_icarus"]).sum())}
            units.append(u)
            owner.append(own + len(levels))
            label.append(np.full(len(u), i, dtype=np.int64))
            levels += [(f"{g}/{name}", remap(grid, g, game)) for name, grid in lv]
        x = np.concatenate(units)
        np.save(tmp / "units.npy", x)
        np.save(tmp / "unit_level.npy", np.concatenate(owner).astype(np.int32))
        np.save(tmp / "unit_game.npy", np.concatenate(label))
        np.savez_compressed(tmp / "levels.npz", **{f"l{i:04d}": g for i, (_, g) in enumerate(levels)})
        write_json_atomic(tmp / "levels.json", [name for name, _ in levels])
        either = sum(o["either"] for o in originals.values())
        originals.update(units=len(x), units_playable=either, units_rate=round(either / len(x), 4))
        return {"source": "+".join(m["source"] for m in ups), "games": list(games),
                "data": ",".join(m["data"] for m in ups) if ups[0]["data"] else ups[1]["data"], "levels": len(levels), "units": len(x),
                "distinct_units": len({u.tobytes() for u in x}), "shape": list(x.shape[1:]), "bad": [],
                "originals": originals}

    return run_stage(stage, fill, refresh)


def blend_split(names: list[str], games: tuple[str, ...]) -> set[int]:
    """Held-out levels of a blend: split_levels within each game, so both games are validated on."""
    held = set()
    for g in games:
        idx = [i for i, n in enumerate(names) if n.startswith(f"{g}/")]
        held |= {idx[j] for j in split_levels([names[i] for i in idx])}
    return held


def load_ingest(ingest: StageResult | str | Path) -> tuple[np.ndarray, np.ndarray, list[tuple[str, np.ndarray]], dict]:
    """(units, unit_level, [(name, grid)], manifest) of an ingest stage (its result, or its folder)."""
    ingest = open_stage(ingest)
    folder, manifest = ingest.folder, ingest.manifest
    names = json.loads((folder / "levels.json").read_text())
    with np.load(folder / "levels.npz") as z:
        levels = [(n, z[f"l{i:04d}"]) for i, n in enumerate(names)]
    return np.load(folder / "units.npy"), np.load(folder / "unit_level.npy"), levels, manifest


def check_units(game: str, units: np.ndarray) -> np.ndarray:
    """The game's checker on training-unit-shaped grids (Mario: window mode). A game without a checker
    (a legend-file game) passes everything: its reports say so. A blend: either game's rule."""
    if game in BLENDS:
        rules = blend_playable(units, game) if len(units) else {"none": np.zeros(0, bool)}
        return np.logical_or.reduce(list(rules.values()))
    if len(units) == 0 or game not in CHECKERS:
        return np.full(len(units), game not in CHECKERS, dtype=bool)
    return np.asarray(playable(units, game, mode="window") if game == "mario" else playable(units, game))


def split_levels(names: list[str], fraction: float = 0.08) -> set[int]:
    """Held-out levels (never windows of a training level: stride-1 windows overlap), chosen by name hash."""
    order = sorted(range(len(names)), key=lambda i: hashlib.sha256(names[i].encode()).hexdigest())
    return set(order[:max(1, round(len(names) * fraction))]) if len(names) > 1 else set()


# ---------------------------------------------------------------- train

DEFAULT_MODEL = {"widths": [16, 32, 64], "latent": 32, "beta": 0.5}   # (32, 64, 128) trains 6x slower on CPU
# Per game: tokens that occur exactly once per unit (decoded as one position, models/vaes.py VAE.nll), and
# whether mirrored copies of the training units are added. Lode Runner: one spawn `M` per level (a per-cell
# softmax decodes none or several: 0 % playable); gravity is vertical, so a level mirrored left-right is
# as playable (the checker gives all 150 originals the same verdict mirrored) and doubles 138 training levels.
UNIQUE_TILES = {"lode_runner": "M"}
MIRROR = {"lode_runner"}
# Games whose models learn from the playable training units only (playable_only=None). Mario's unplayable
# windows (1.9 %) are cuts, not content: a window that starts over a gap or beside a wall the jump arcs cannot
# clear; leaving them out lifts raw windows drawn at T=1 from 97.5 % to 98.7 % playable (bench/levels.py --seeds 5,
# median). Lode Runner's and Zelda's unplayable units are whole levels and rooms (water, push-blocks): content.
PLAYABLE_ONLY = {"mario"}
DEFAULT_TRAINING = {"steps": 6000, "epoch_steps": 500, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100}
# units="columns": a window is a sequence of whole columns, each one of those in the training windows (Mario:
# 259), with an `ar` head over the columns before it (models/vaes.py). Every column drawn is a real one, so
# pipes, stairs and brick blocks come out whole; the latent holds less (bench/levels.py measures both kinds).
COLUMN_MODEL = {"widths": [64, 128, 256], "latent": 32, "beta": 0.5, "ar": 3}


def column_vocabulary(units: np.ndarray) -> list[list[int]]:
    """The distinct columns of (N, rows, cols) units, most frequent first (ties by content)."""
    cols, counts = np.unique(units.transpose(0, 2, 1).reshape(-1, units.shape[1]), axis=0, return_counts=True)
    return [c.tolist() for c in cols[np.argsort(-counts, kind="stable")]]


def train_levels(game: str = "mario", data: str | None = None, kind: str = "vae", model: dict | None = None,
                 training: dict | None = None, width: int | None = None, refresh: bool = False,
                 progress: bool = True, ingest_dir: StageResult | str | None = None, units: str = "cells",
                 playable_only: bool | None = None) -> StageResult:
    """Ingest (cached; or use `ingest_dir`) and train a vae/cvae on the game's units.
    `playable_only`: train on the units the game's checker passes (validation keeps them all); None: PLAYABLE_ONLY.
    A cvae is conditioned on Mario window features (enemies/pipes/gaps buckets), or for a blend
    (game "mario+kid_icarus") on the game: 0 = mario, 1 = kid_icarus. `units`: "cells" (a softmax over tiles
    per cell) or "columns" (over the training set's whole columns; COLUMN_MODEL)."""
    from flows.train import train_windows

    if kind == "cvae" and game != "mario" and game not in BLENDS:
        raise ValueError("cvae conditions are Mario window features (enemies/pipes/gaps) or the game of a blend "
                         f"({', '.join(BLENDS)}); use --model vae")
    if playable_only and game not in CHECKERS and game not in BLENDS:
        raise ValueError(f"--playable-only: {game} has no playability checker (have: {', '.join(CHECKERS)})")
    ingest = open_stage(ingest_dir or ingest_levels(game, data, width, refresh))
    x, owner, levels, manifest = load_ingest(ingest)
    if len(x) < 2:
        bad = manifest["bad"]
        why = (f"{len(bad)} of {len(bad) + manifest['levels']} files unreadable; first: {bad[0]['reason']}" if bad
               else f"{manifest['levels']} levels read, none as wide as a unit" + (f" (--width {width})" if width else ""))
        raise ValueError(f"{data or manifest['source']}: {len(x)} {game} training units; need at least 2 ({why})")
    names = [n for n, _ in levels]
    held = blend_split(names, BLENDS[game]) if game in BLENDS else split_levels(names)
    val_mask = np.isin(owner, list(held))
    if val_mask.all() or not val_mask.any():                  # a single level: validate on every 10th unit
        val_mask = np.arange(len(x)) % 10 == 9
    if kind == "cvae":                                        # (N, 1) game index, or (N, 3) feature buckets
        cond = np.load(ingest.folder / "unit_game.npy")[:, None] if game in BLENDS else mario_conditions(x)
    else:
        cond = None
    pick = lambda m: (x[m], None if cond is None else cond[m])  # noqa: E731
    if playable_only is None:
        playable_only = game in PLAYABLE_ONLY
    playable_units = check_units(game, x) if playable_only else np.ones(len(x), bool)
    train = pick(~val_mask & playable_units)
    if game in MIRROR:                                        # (N, rows, cols) -> (2N, rows, cols), x reversed
        train = (np.concatenate([train[0], train[0][:, :, ::-1]]),
                 None if train[1] is None else np.concatenate([train[1], train[1]]))
    legend = get_legend(game)
    if units == "columns":
        model_cfg = {**COLUMN_MODEL, **(model or {}), "dims": 1, "columns": column_vocabulary(train[0])}
    elif units == "cells":
        unique = [legend.index(t) for t in UNIQUE_TILES.get(game, "")]
        model_cfg = {**DEFAULT_MODEL, **({"unique": unique} if unique else {}), **(model or {})}
    else:
        raise ValueError(f"units {units!r}: cells or columns")
    model_cfg.update(kind=kind, vocab=legend.vocab)
    if kind == "cvae":
        model_cfg["cond"] = [len(BLENDS[game])] if game in BLENDS else [len(COND_LEVELS)] * len(COND_NAMES)
    desc = {"game": game, "source": manifest["source"], "data": manifest["data"], "width": width,
            "ingest": ingest.folder.name, "held_out": sorted(levels[i][0] for i in held),
            "cond": (["game"] if game in BLENDS else list(COND_NAMES)) if kind == "cvae" else None,
            "originals": manifest["originals"]}
    if playable_only:
        desc["left_out_unplayable"] = int((~val_mask & ~playable_units).sum())
    if game in BLENDS:
        desc["games"] = list(BLENDS[game])
    if game in MIRROR:
        desc["augment"] = "mirror"
    return train_windows(f"{legend.game}-{manifest['source']}", (manifest["key"],), desc, train, pick(val_mask),
                         model_cfg, {**DEFAULT_TRAINING, **(training or {})}, refresh=refresh, progress=progress,
                         job="levels")


def resolve_level_model(model: str | None, default: str = SAMPLE_MODEL) -> Path:
    """None/"auto": the shipped models/pretrained/<default> (if it is missing, the same kind of model trained on
    first use: a cached stage, minutes once, then instant); or a model folder path / a shipped or trained name."""
    from flows.catalog import PRETRAINED, resolve_model

    if model in (None, "auto"):
        if (PRETRAINED / default / "config.json").is_file():
            return PRETRAINED / default
        return train_levels("mario", **SHIPPED[default]).folder
    return resolve_model(model, channels=0, job="levels")


def _level_config(folder: Path) -> dict:
    from models.checkpoints import read_config

    cfg = read_config(folder)
    if cfg["model"]["kind"] not in ("vae", "cvae") or "game" not in cfg.get("data", {}):
        raise ValueError(f"{folder}: not a level model (kind {cfg['model']['kind']}); train one with "
                         "`aeflow levels train`")
    return cfg


def _load(model: str | None, default: str = SAMPLE_MODEL):
    from models.registry import load_model

    folder = resolve_level_model(model, default)
    cfg = _level_config(folder)
    return load_model(folder), cfg, folder


def check_sample(model: str | None = None, cond: str | None = None, spread: float = 1.0, length: int | None = None,
                 blend: float | None = None) -> None:
    """A sample request's mistakes, found from the model's config alone: the CLI calls this before Prefect
    starts, sample_levels again (the same rules for callers from Python)."""
    from flows.catalog import PRETRAINED

    if not 0 < spread <= 1:
        raise ValueError(f"--spread {spread}: the latent spread must be in (0, 1] (1 = the prior as trained)")
    c = parse_cond(cond)
    default = COND_MODEL if cond else SAMPLE_MODEL
    if model in (None, "auto") and not (PRETRAINED / default / "config.json").is_file():
        return                                    # trained on first use, inside the flow
    folder = resolve_level_model(model, default)
    cfg = _level_config(folder)
    game, kind, cols = cfg["data"]["game"], cfg["model"]["kind"], cfg["model"]["shape"][1]
    if blend is not None or game in BLENDS:
        if cond or length is not None:
            raise ValueError("a blend model takes --blend W only (no --cond, no --length)")
        return
    if (c is None) != (kind == "vae"):
        raise ValueError(f"{folder.name} is a {kind}: "
                         + ("--cond is required (e.g. enemies=many,pipes=some)" if c is None else
                            f"--cond needs a cvae (the shipped {COND_MODEL}, or aeflow levels train --model cvae)"))
    if length is not None and length != cols and game != "mario":
        raise ValueError("--length (full-length levels from a latent walk) is for Mario; other games sample units")
    if length is not None and length < cols:
        raise ValueError(f"--length {length} is shorter than one window ({cols} columns)")


def _training_units(cfg: dict) -> tuple[np.ndarray, dict]:
    """The training units a model saw (re-ingested from its recorded source: a cached stage), and the
    originals' pass rates. Held-out levels' units are included: novelty is measured against the corpus."""
    d = cfg["data"]
    x, _, _, manifest = load_ingest(ingest_levels(d["game"], d.get("data") if d.get("source") != "mario-gpt" else None,
                                                  d.get("width")))
    return x, manifest["originals"]


# ---------------------------------------------------------------- sample

def _generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def fill_cond(cond: np.ndarray | None, n: int, known: np.ndarray, gen) -> np.ndarray | None:
    """(1, K) asked buckets with -1 for "any" -> (n, K): each row's unnamed variables copied from a training
    window drawn at random (`known`, (N, K)), so they come as often, and together, as in the corpus (asking
    for many enemies says nothing about pipes)."""
    import torch

    if cond is None:
        return None
    rows = known[torch.randint(len(known), (n,), generator=gen).numpy()]
    return np.where(cond >= 0, cond, rows).astype(np.int64)


def cond_ok(grids: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
    """(N,) bool: each grid's measured buckets equal the asked ones (variables asked for, not -1)."""
    if cond is None:
        return np.ones(len(grids), bool)
    asked = cond[0] >= 0
    return (mario_conditions(grids)[:, asked] == cond[0, asked]).all(1)


def _cond_tensor(cond: np.ndarray | None, n: int):
    import torch

    return None if cond is None else torch.from_numpy(np.repeat(cond, n // len(cond), 0))


def default_temperature(net) -> float:
    """`sample`'s temperature when none is given: 1 for a model with an `ar` head (its most likely draws repeat
    one another: 30 % distinct for Mario columns), else 0 (the most likely tile per cell)."""
    return 1.0 if net.cfg.ar else 0.0


def delivery(game: str, batch: np.ndarray, train_units: np.ndarray, cond: np.ndarray | None,
             seen: set[bytes]) -> dict[str, np.ndarray]:
    """What `sample` asks of each drawn window, (N,) bool each: "playable", "pipes" (well formed; Mario),
    "asked" (the buckets of --cond), "new" (not a training window) and "distinct" (not delivered before in this
    job: the bytes of every kept window join `seen`; a rare mix of asked features draws repeats); "keep" is all
    of them. The one rule for `sample` and the bench's delivered rows."""
    d = {"playable": check_units(game, batch),
         "pipes": mario_pipes_ok(batch) if game == "mario" else np.ones(len(batch), bool),
         "asked": cond_ok(batch, cond), "new": ~copies(batch, train_units), "distinct": np.ones(len(batch), bool)}
    keep = d["playable"] & d["pipes"] & d["asked"] & d["new"]
    for i in np.flatnonzero(keep):
        key = batch[i].tobytes()
        d["distinct"][i] = key not in seen
        seen.add(key)
    d["keep"] = keep & d["distinct"]
    return d


def sample_windows(net, n: int, gen, cond: np.ndarray | None = None, temperature: float = 0.0,
                   spread: float = 1.0) -> np.ndarray:
    """n decoded windows (n, rows, cols) uint8 from z ~ N(0, spread^2 I): the most likely tile per cell
    (temperature 0), or each cell drawn from softmax(logits / temperature)."""
    return net.sample(n, gen, cond=_cond_tensor(cond, n), greedy=temperature <= 0,
                      temperature=max(temperature, 1e-6), spread=spread).numpy().astype(np.uint8)


def full_levels(net, n: int, length: int, gen, cond: np.ndarray | None = None, candidates: int = 8,
                rho: float = 0.7, temperature: float = 0.0, spread: float = 1.0,
                max_restarts: int | None = None, asked: np.ndarray | None = None) -> tuple[list[np.ndarray], int, int]:
    """n levels `length` columns long from latent walks, window by window, all n drawn and checked together.
    Each next window is chosen among `candidates` steps of its level's walk so that the joined prefix stays
    playable (the full-level checker) and its pipes well formed: seams are checked,
    not assumed. Of those, one that repeats no stretch of the level so far is preferred (repeats_itself). A
    prefix with no playable continuation starts again from a fresh z (a restart; once `max_restarts` are spent,
    that level is given up). Returns (levels, rejected candidate windows, restarts).
    cond: (n, K) a cvae's condition per level; asked: (1, K) the buckets asked for (-1: any), which every
    window must then have, as `sample --cond` delivers. `spread` scales the walk as in latent_walk."""
    import torch

    from models.latent import walk_step

    z = spread * torch.randn(n, net.cfg.latent, generator=gen)        # each level's last point on its walk
    levels: list[np.ndarray | None] = [None] * n
    todo, dropped, rejected, restarts = list(range(n)), set(), 0, 0
    while todo:
        by_width: dict[int, list[int]] = {}                 # levels as long as each other join in one batch
        for i in todo:
            by_width.setdefault(0 if levels[i] is None else levels[i].shape[1], []).append(i)
        for width, group in by_width.items():
            steps = walk_step(z[group].repeat_interleave(candidates, 0), len(group) * candidates, gen, rho, spread)
            c = None if cond is None else torch.from_numpy(np.repeat(cond[group], candidates, 0))
            before = None                                   # an `ar` head continues from the level so far
            if net.cfg.ar and width:
                tails = np.stack([levels[i][:, -net.cfg.ar:] for i in group])
                before = torch.from_numpy(np.repeat(tails, candidates, 0))
            wins = net.draw(net.decode(steps, c), gen, temperature, before).numpy().astype(np.uint8)
            wins = wins.reshape(len(group), candidates, *wins.shape[1:])
            if width:
                so_far = np.stack([levels[i] for i in group])[:, None].repeat(candidates, 1)
                wins = np.concatenate([so_far, wins], 3)
            flat = wins.reshape(-1, *wins.shape[2:])
            ok = (mario_playable(flat, mode="level") & mario_pipes_ok(flat)).reshape(len(group), candidates)
            if asked is not None:                           # the new window has what --cond asked for
                ok &= cond_ok(flat[:, :, -net.cfg.shape[1]:], asked).reshape(len(group), candidates)
            for g, i in enumerate(group):
                if ok[g].any():
                    good = np.flatnonzero(ok[g])            # the first that repeats no stretch of the level so far
                    k = next((int(j) for j in good if not width or not repeats_itself(wins[g, j], width)),
                             int(good[0]))                  # else a repeat rather than a restart
                    rejected += k
                    levels[i], z[i] = wins[g, k], steps[g * candidates + k]
                elif max_restarts is None or restarts < max_restarts:
                    rejected, restarts = rejected + candidates, restarts + 1
                    levels[i], z[i] = None, spread * torch.randn(net.cfg.latent, generator=gen)
                else:                                       # out of restarts: this one is given up
                    rejected, levels[i] = rejected + candidates, None
                    dropped.add(i)
        todo = [i for i in todo if i not in dropped and (levels[i] is None or levels[i].shape[1] < length)]
    return [g[:, :length] for g in levels if g is not None and g.shape[1] >= length], rejected, restarts


REPEAT_COLUMNS = 16      # 2 of the 15 SMB levels repeat a stretch this long (16, 30 columns); 10 cvae walks of 200
                         # columns asked for many enemies all did (16-59), 7 of 10 still do when non-repeats are preferred


def repeats_itself(level: np.ndarray, old: int, span: int = REPEAT_COLUMNS) -> bool:
    """Whether a stretch of `span` columns that reaches into the new columns (from `old` on) repeats an earlier,
    non-overlapping stretch exactly. Stretches of fewer than 3 distinct columns (flat ground, sky) may repeat."""
    cols = [level[:, j].tobytes() for j in range(level.shape[1])]
    first: dict[tuple, int] = {}
    for i in range(level.shape[1] - span + 1):
        key = tuple(cols[i:i + span])
        if len(set(key)) < 3:
            continue
        if i + span > old and key in first and first[key] + span <= i:
            return True
        first.setdefault(key, i)
    return False


def walk_windows(net, z, gen, cond=None, temperature: float = 0.0) -> np.ndarray:
    """models.latent.decode_windows as uint8 tile grids: (rows, K * cols), or (L, rows, K * cols)."""
    from models.latent import decode_windows

    return decode_windows(net, z, gen, cond, temperature).numpy().astype(np.uint8)


def _full_levels(net, n: int, length: int, gen, cond, raw: bool, temperature: float, max_tries: int,
                 known: np.ndarray | None = None, spread: float = 1.0):
    """(levels, raw_ok, rejected windows, restarts): `n` levels from latent walks. raw_ok scores plain walks
    (window after window, nothing chosen; these are the levels when `raw`), else levels are built with
    `full_levels`, seams checked. A cvae's unnamed condition variables are drawn per level (fill_cond)."""
    import torch

    from models.latent import latent_walk

    k, chunk = -(-length // net.cfg.shape[1]), 256             # windows per level; levels drawn together
    walks, levels, rejected, restarts = [], [], 0, 0
    with torch.no_grad():
        m = n if raw else min(n, 100)
        for start in range(0, m, chunk):
            z = torch.stack([latent_walk(k, net.cfg.latent, gen, spread=spread) for _ in range(min(chunk, m - start))])
            c = _cond_tensor(fill_cond(cond, len(z), known, gen), len(z) * k)
            walks += list(walk_windows(net, z, gen, c, temperature)[..., :length])
        raw_ok = [bool(v) for v in mario_playable(np.stack(walks), mode="level")]
        if raw:
            return walks, raw_ok, 0, 0
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            got, rej, res = full_levels(net, m, length, gen, fill_cond(cond, m, known, gen), temperature=temperature,
                                        spread=spread, max_restarts=max_tries * m, asked=cond)
            levels, rejected, restarts = levels + got, rejected + rej, restarts + res
    return levels, raw_ok, rejected, restarts


def _write_levels(out: Path, grids: list[np.ndarray], legend, prefix: str = "level") -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, g in enumerate(grids):
        name = f"{prefix}-{i:03d}"
        write_bytes_atomic(out / f"{name}.txt", grid_to_level(g, legend).encode())
        write_bytes_atomic(out / f"{name}.png", png_bytes(render_level(g, legend)))
        names.append(name)
    return names


def written_files(names: list[str]) -> list[str]:
    """The files _write_levels wrote for these names."""
    return [f"{name}{ext}" for name in names for ext in (".txt", ".png")]


def _rate(ok: np.ndarray) -> dict:
    k, n = int(np.sum(ok)), len(ok)
    lo, hi = wilson(k, n)
    return {"playable": k, "of": n, "rate": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def sample_levels(out_dir: str, model: str | None = None, n: int = 50, length: int | None = None, seed: int = 0,
                  cond: str | None = None, raw: bool = False, temperature: float | None = None, max_tries: int = 50,
                  blend: float | None = None, spread: float = 1.0) -> dict:
    """Write `n` levels into out_dir: windows of the model's shape, or `length`-column levels from a latent
    walk (Mario); a blend model (or `blend` given) goes to sample_blend. Playable only, new (a copy of a
    training window is rejected) and for Mario with well-formed pipes (resampled; `raw` keeps the decoder
    output as is). Tiles: the decoder's most likely tile (temperature 0: clean, few enemies and pipes) or drawn
    from it (1: richer, noisier); None: default_temperature. Latents: z ~ N(0, spread^2 I); spread below 1
    trades variety for playability (bench/levels.py measures both).
    report.json holds raw and delivered playability beside the originals' rate, rejections, novelty,
    diversity and TPKL."""
    t0 = time.perf_counter()
    check_sample(model, cond, spread, length, blend)
    net, cfg, folder = _load(model, COND_MODEL if cond else SAMPLE_MODEL)
    if temperature is None:
        temperature = default_temperature(net)
    game = cfg["data"]["game"]
    if blend is not None or game in BLENDS:
        return sample_blend(out_dir, net, cfg, folder, n, blend, seed, raw, temperature, max_tries, t0, spread)
    legend = get_legend(game)
    c = parse_cond(cond)
    gen = _generator(seed)
    train_units, originals = _training_units(cfg)
    rows, cols = net.cfg.shape
    full = length is not None and length != cols
    report = {"model": str(folder), "game": game, "seed": seed, "n": n, "raw": raw, "cond": cond,
              "temperature": temperature, "spread": spread,
              "kind": "level" if full else "window", "shape": [rows, length if full else cols],
              "originals": originals}
    known = mario_conditions(train_units) if c is not None else None
    if full:
        levels, raw_ok, rejected_windows, restarts = _full_levels(net, n, length, gen, c, raw, temperature, max_tries,
                                                                  known, spread)
        ok = mario_playable(np.stack(levels), mode="level") if levels else np.zeros(0, bool)
        whose = MARIO_GPT_NOTE if cfg["data"].get("source") == "mario-gpt" else ""
        report.update(raw_playability=_rate(np.array(raw_ok)), delivered=_rate(ok),
                      rejected={"windows": rejected_windows, "restarts": restarts},
                      originals_rate=f"{originals.get('levels_playable')} / {originals.get('levels')} of the model's corpus "
                                     f"levels (training and held out{whose})")
        if len(levels) < n:
            report["shortfall"] = (f"only {len(levels)} of {n} levels after {restarts} restarts (max_tries {max_tries})"
                                   + _weak_hint(report["raw_playability"], cfg))
        grids = levels
    else:
        drawn, grids, raw_ok, pipes_ok, off_cond, copied, repeats, seen = 0, [], [], [], 0, 0, 0, set()
        while len(grids) < n and drawn < max_tries * n:
            m = max(n - len(grids), 64) if not raw else n
            batch = sample_windows(net, m, gen, fill_cond(c, m, known, gen), temperature, spread)
            d = delivery(game, batch, train_units, c, seen)
            ok, pipes = d["playable"], d["pipes"]
            drawn += len(batch)
            raw_ok.append(ok)
            pipes_ok.append(pipes)
            off_cond += int((ok & pipes & ~d["asked"]).sum())
            copied += int((ok & pipes & d["asked"] & ~d["new"]).sum())
            repeats += int((~d["distinct"]).sum())
            grids += list(batch if raw else batch[d["keep"]])
        grids = grids[:n]
        raw_ok, pipes_ok = np.concatenate(raw_ok), np.concatenate(pipes_ok)
        ok = check_units(game, np.stack(grids)) if grids else np.zeros(0, bool)
        report.update(raw_playability=_rate(raw_ok), delivered=_rate(ok),
                      rejected={k: 0 if raw else v for k, v in {     # --raw keeps every draw: none rejected
                          "unplayable": int((~raw_ok).sum()),
                          **({"broken_pipes": int((raw_ok & ~pipes_ok).sum())} if game == "mario" else {}),
                          **({"not_as_asked": off_cond} if c is not None else {}),
                          "copies_of_training_windows": copied, "repeats": repeats}.items()},
                      originals_rate=f"{originals['units_playable']} / {originals['units']} of the model's corpus units "
                                     "(training and held out)")
        if game == "mario":
            report["raw_pipes_ok"] = round(float(pipes_ok.mean()), 4)
        if len(grids) < n:
            report["shortfall"] = (f"only {len(grids)} acceptable of {drawn} drawn (max_tries {max_tries})"
                                   + _weak_hint(report["raw_playability"], cfg))
    if grids and not full:
        g = np.stack(grids)
        report.update(novelty=novelty(g, train_units), diversity=diversity(g),
                      tpkl={"k2": round(tpkl(train_units, g, 2), 4), "k3": round(tpkl(train_units, g, 3), 4)})
    elif grids:
        report.update(diversity=diversity(np.stack(grids)),
                      novelty_windows=novelty(np.concatenate([windows(g, cols, cols) for g in grids]), train_units))
    if cond and game == "mario" and grids:
        units = np.stack(grids) if not full else np.concatenate([windows(g, cols, cols) for g in grids])
        feats = mario_conditions(units)
        report["cond_match"] = {k: round(float((feats[:, i] == c[0, i]).mean()), 3) for i, k in enumerate(COND_NAMES)
                                if c[0, i] >= 0}
    return _write_sample(Path(out_dir), grids, legend, report, t0)


# Why `sample --length`'s originals can differ from `levels check` on VGLC's folder: the model's corpus is
# mario-gpt's copy, each level without its first 4 columns (formats/levels.py mario_gpt_levels); with the fixed
# start cell (2, 2) two of them (1-2, 4-2: a ceiling there) failed, 13 / 15 against 15 / 15; both start on the
# standable cells of the first columns now and agree.
MARIO_GPT_NOTE = "; mario-gpt's copy of VGLC's 15 SMB levels, each without its first 4 columns"


def _weak_hint(raw: dict, cfg: dict) -> str:
    """What to do when `sample` falls short: a weak model (few steps) rarely draws a playable level."""
    steps = cfg.get("steps")
    trained = f"trained {steps} steps" if steps else "this model"
    rate = "n/a" if raw["rate"] is None else f"{raw['rate']:.1%}"
    return (f"; raw draws were {rate} playable ({trained}): train longer (levels train --steps, default "
            f"{DEFAULT_TRAINING['steps']}), or keep the raw decoder output with --raw")


def _write_sample(out: Path, grids: list[np.ndarray], legend, report: dict, t0: float,
                  rules: list[dict] | None = None) -> dict:
    """The levels (text + PNG each), a contact sheet and report.json (with the file names, each file's `rules`
    when given, and seconds)."""
    names = _write_levels(out, grids, legend)
    if grids:
        write_bytes_atomic(out / "contact_sheet.png", contact_sheet(grids[:64], legend, names[:64]))
    report["files"] = names
    if rules is not None:
        report["rules"] = [{"file": f, **r} for f, r in zip(names, rules)]
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return write_report(out, report, written_files(names) + (["contact_sheet.png"] if grids else []))


# ---------------------------------------------------------------- blend

def blend_condition(w: float) -> np.ndarray:
    """Weight of the second game w in [0, 1] -> the (1, 2) soft condition (1 - w, w) the cvae's decoder
    takes in place of a one-hot game (models/vaes.py CVAE.one_hot); w = 0 / 1 are the pure games."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"--blend {w}: the second game's weight must be in [0, 1]")
    return np.array([[1.0 - w, w]], dtype=np.float32)


def sample_blend(out_dir: str, net, cfg: dict, folder: Path, n: int, blend: float | None, seed: int, raw: bool,
                 temperature: float, max_tries: int, t0: float, spread: float = 1.0) -> dict:
    """sample_levels for a loaded blend cvae: `n` 16 x 16 segments decoded under the soft game condition
    (1 - blend, blend). Each is scored by both games' rules (formats/playability.py blend_playable); delivered
    segments pass at least one (and have well-formed Mario pipes); report.json names the rules each file passes."""
    game, kind = cfg["data"]["game"], cfg["model"]["kind"]
    if game not in BLENDS or kind != "cvae":
        raise ValueError(f"{folder.name}: --blend needs a game-conditioned cvae (aeflow levels train --game "
                         f"{next(iter(BLENDS))} --model cvae); this is a {kind} on {game}")
    a, b = BLENDS[game]
    if blend is None:
        raise ValueError(f"{folder.name} blends {a} and {b}: give --blend W in [0, 1] (0: {a}, 1: {b})")
    legend = get_legend(game)
    c = blend_condition(blend)                                   # (1, 2) weights, repeated for the batch
    gen = _generator(seed)
    train_units, originals = _training_units(cfg)
    drawn, grids, rules, raw_rules, pipes_ok = 0, [], [], [], []
    while len(grids) < n and drawn < max_tries * n:
        k = n if raw else max(n - len(grids), 64)
        batch = sample_windows(net, k, gen, c, temperature, spread)     # (k, 16, 16) union tiles
        r = blend_playable(batch, game)
        pipes = np.asarray(mario_pipes_ok(as_game(batch, game, "mario", AS_MARIO)))
        keep = np.ones(k, bool) if raw else (r[a] | r[b]) & pipes
        drawn += k
        raw_rules.append(r)
        pipes_ok.append(pipes)
        grids += list(batch[keep])
        rules += [{a: bool(r[a][i]), b: bool(r[b][i])} for i in np.flatnonzero(keep)]
    grids, rules = grids[:n], rules[:n]
    rr = {g: np.concatenate([r[g] for r in raw_rules]) for g in (a, b)}
    pipes_ok = np.concatenate(pipes_ok)
    either = rr[a] | rr[b]
    ok = np.array([r[a] or r[b] for r in rules], dtype=bool)
    report = {"model": str(folder), "game": game, "blend": blend, "condition": {a: 1 - blend, b: blend},
              "seed": seed, "n": n, "raw": raw, "temperature": temperature, "spread": spread, "kind": "window",
              "shape": list(net.cfg.shape), "originals": originals,
              "raw_playability": _rate(either), "raw_rules": {g: _rate(rr[g]) for g in (a, b)},
              "delivered": _rate(ok), "delivered_rules": {g: _rate(np.array([r[g] for r in rules], bool))
                                                         for g in (a, b)},
              "rejected": {"unplayable": int((~either).sum()), "broken_pipes": int((either & ~pipes_ok).sum())}
              if not raw else {"unplayable": 0, "broken_pipes": 0},
              "originals_rate": f"{originals['units_playable']} / {originals['units']} training units pass either rule"}
    if len(grids) < n:
        report["shortfall"] = (f"only {len(grids)} acceptable of {drawn} drawn (max_tries {max_tries})"
                               + _weak_hint(report["raw_playability"], cfg))
    if grids:
        g = np.stack(grids)
        report.update(tile_shares=game_tile_shares(g, game), novelty=novelty(g, train_units), diversity=diversity(g),
                      tpkl={"k2": round(tpkl(train_units, g, 2), 4), "k3": round(tpkl(train_units, g, 3), 4)})
    return _write_sample(Path(out_dir), grids, legend, report, t0, rules)


# ---------------------------------------------------------------- interpolate

def interpolate_levels(level_a: str, level_b: str, out_dir: str, steps: int = 8, model: str | None = None,
                       spherical: bool = True, temperature: float = 0.0, seed: int = 0) -> dict:
    """Decode `steps` points between the encodings of two level files (lerp, or slerp: models/latent.py); the
    first and last are the model's decodings of A and B (report["ends_match"] says how many tiles come back).
    Tiles are drawn at `temperature` (0: the most likely). The default, mario-columns along the slerp, keeps
    the corpus's rate of enemies in the middle steps and most pipes whole; mario-vae brings the ends back
    closer but washes enemies and ? blocks out (`bench/levels.py --interpolate 40`: README). Levels wider than the model's window are encoded window by window and
    interpolated per window, so full-length levels blend column block by column block; the last window ends at
    the last column (it overlaps the one before: no column is dropped). Levels of different widths blend over
    the shorter one's width (report["cut"]). report["stats"]: per step, for A and B and per as many columns of
    the training corpus, what makes a level (Mario: enemies, ? blocks, well-formed pipes)."""
    import torch

    from models.latent import interpolate

    net, cfg, folder = _load(model, INTERPOLATE_MODEL)
    if cfg["model"]["kind"] != "vae":
        raise ValueError(f"{folder.name}: interpolate needs a vae (this is a {cfg['model']['kind']})")
    game = cfg["data"]["game"]
    legend = get_legend(game)
    rows, cols = net.cfg.shape
    levels = []
    for path in (level_a, level_b):
        g = read_level(Path(path), legend)
        if g.shape[0] != rows or g.shape[1] < cols:
            raise BadLevel(path, f"is {g.shape[0]} x {g.shape[1]}; this model needs {rows} rows and >= {cols} columns")
        levels.append(g)
    width = min(g.shape[1] for g in levels)
    k = -(-width // cols)
    starts = [min(i * cols, width - cols) for i in range(k)]
    with torch.no_grad():
        mu = [net.encode(torch.from_numpy(np.stack([g[:, s:s + cols] for s in starts]).astype(np.int64)))[0]
              for g in levels]                                                      # (K, latent) each
        path = interpolate(mu[0], mu[1], steps, spherical)                  # (steps, K, latent)
        joined = walk_windows(net, path, torch.Generator().manual_seed(seed), None, temperature)
    new = width - (k - 1) * cols                                  # columns of the last window not already covered
    grids = [np.concatenate([g[:, :(k - 1) * cols], g[:, k * cols - new:]], 1) for g in joined]
    ok = mario_playable(np.stack(grids), mode="level" if k > 1 else "window") if game == "mario" \
        else check_units(game, np.stack(grids))
    out = Path(out_dir)
    names = _write_levels(out, grids, legend, "step")
    labels = [f"t={t:.2f}" for t in np.linspace(0, 1, steps)]
    write_bytes_atomic(out / "contact_sheet.png", contact_sheet(grids, legend, labels, columns=1))
    report = {"model": str(folder), "a": str(level_a), "b": str(level_b), "steps": steps, "windows": k,
              "width": width, "files": names, "playable": [bool(v) for v in ok],
              "path": "slerp" if spherical else "lerp", "temperature": temperature, "seed": seed,
              "stats": _interpolation_stats(game, grids, [g[:, :width] for g in levels], cfg),
              # the ends are decodings of A and B: the share of their tiles that come back
              "ends_match": {"a": round(float((grids[0] == levels[0][:, :width]).mean()), 4),
                             "b": round(float((grids[-1] == levels[1][:, :width]).mean()), 4)}}
    if levels[0].shape[1] != levels[1].shape[1]:
        report["cut"] = (f"A is {levels[0].shape[1]} columns, B {levels[1].shape[1]}: blended over the first "
                         f"{width} of each")
    return write_report(out, report, written_files(names) + ["contact_sheet.png"])


def level_stats(game: str, grids: np.ndarray) -> dict[str, np.ndarray]:
    """What a reader sees first in a level, per grid of a stack (N, rows, cols): Mario's enemies, ? blocks (with
    coin or power-up) and whether every pipe is whole; other games: the share of each non-empty tile."""
    legend = get_legend(game)
    if game != "mario":
        return {t: (grids == legend.index(t)).mean((1, 2)) for t in legend.tiles if t != "-"}
    return {"enemies": (grids == legend.index("E")).sum((1, 2)),
            "question_blocks": np.isin(grids, [legend.index(t) for t in "?Q" if t in legend.tiles]).sum((1, 2)),
            "pipes_ok": np.asarray(mario_pipes_ok(grids))}


def _interpolation_stats(game: str, grids: list[np.ndarray], ends: list[np.ndarray], cfg: dict) -> dict:
    """level_stats per step, of A and B, and of the corpus: the mean over its training windows, scaled to the
    steps' width (so a step can be read against what a level that long usually holds)."""
    def rows(stats: dict[str, np.ndarray]) -> list[dict]:
        return [{k: bool(v[i]) if v.dtype == bool else round(float(v[i]), 4) if v.dtype.kind == "f" else int(v[i])
                 for k, v in stats.items()} for i in range(len(next(iter(stats.values()))))]

    a, b = rows(level_stats(game, np.stack(ends)))
    out = {"steps": rows(level_stats(game, np.stack(grids))), "a": a, "b": b}
    units, _ = _training_units(cfg)
    scale = grids[0].shape[1] / units.shape[2]
    counts = lambda key: game == "mario" and key != "pipes_ok"            # noqa: E731  (shares stay shares)
    out["corpus_per_same_width"] = {key: round(float(v.mean()) * (scale if counts(key) else 1), 3)
                                    for key, v in level_stats(game, units).items()}
    return out


# ---------------------------------------------------------------- check

def files_to_check(p: Path) -> list[Path]:
    """A level file, or every *.txt under a folder (readme and hidden entries skipped); a clear error for a
    missing path or a folder without any."""
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_file():
        return [p]
    files = sorted(q for q in p.rglob("*.txt") if q.stem.lower() != "readme"
                   and not any(part.startswith(".") for part in q.relative_to(p).parts))
    if not files:
        raise FileNotFoundError(f"{p}: no level files (*.txt) under it")
    return files


def check_levels(path: str, game: str = "mario", mode: str = "auto", out_json: str | None = None) -> dict:
    """Playability of one level file or every *.txt under a folder (ours or not). Mario mode "auto": a
    level up to 32 columns wide is a window, wider is a full level (both start on a standable cell of the
    first 3 columns). Bad files (unreadable, links, a shape no checker takes) are reported and skipped; VGLC
    path annotations whose level is checked too are skipped and listed. Prints nothing; returns the report."""
    legend = get_legend(game)
    game_name = legend.game
    if game_name not in CHECKERS:
        raise ValueError(f"no playability checker for {game_name!r} (mario, kid_icarus, lode_runner, zelda)")
    p = Path(path)
    files = files_to_check(p)
    copies_of = annotation_copies(files)
    skipped = [{"file": str(f.relative_to(p)) if p.is_dir() else f.name,
                "reason": f"VGLC path annotation: a copy of {lv.relative_to(p) if p.is_dir() else lv.name} with the "
                          "player's path marked"} for f, lv in copies_of.items()]
    results, bad, verdicts = [], [], []
    for f in files:
        if f in copies_of:
            continue
        try:                                    # per-file boundary: one bad file never stops the others
            g = read_level(f, legend)
            results.append(_check_one(g, game_name, legend, mode, str(f.relative_to(p)) if p.is_dir() else f.name))
        except (BadLevel, ValueError) as e:
            bad.append({"file": str(f), "reason": str(e) if isinstance(e, BadLevel) else f"{f}: {e}"})
    for r in results:
        verdicts += r.pop("_rooms") if r.get("mode") == "rooms" else [r["playable"]]
    k = sum(r["playable"] for r in results)
    report = {"path": str(p), "game": game_name, "files": len(files), "checked": len(results), "bad": bad,
              "skipped": skipped, "summary": _rate(np.array(verdicts)) if verdicts else None,
              "unit": "rooms" if any(r.get("mode") == "rooms" for r in results) else "files",
              "originals": ORIGINAL_RATES.get(game_name), "levels": results}
    report["playable"] = k
    if out_json:
        write_json_atomic(Path(out_json), report)
    return report


def _check_one(g: np.ndarray, game: str, legend, mode: str, rel: str) -> dict:
    """One level's row of check_levels (a Zelda map: its rooms' verdicts in "_rooms")."""
    if game == "mario":
        m = mode if mode != "auto" else ("window" if g.shape[1] <= 32 else "level")
        return {"file": rel, "shape": list(g.shape), "mode": m, "playable": bool(mario_playable(g, legend, m))}
    if game == "zelda" and g.shape != (16, 11):      # a dungeon map: score its rooms with a door or stair
        checks = [zelda_check(r) for r in zelda_rooms(g)]       # ValueError: not a grid of rooms
        scored = [c["playable"] for c in checks if c["doors"] or c["stairs"]]
        return {"file": rel, "shape": list(g.shape), "mode": "rooms", "rooms": len(checks),
                "rooms_with_doors": len(scored), "rooms_playable": sum(scored), "playable": all(scored),
                "_rooms": scored}
    if game == "kid_icarus":                 # full levels: the top rows are walled off (paths end at rows 4-7)
        return {"file": rel, "shape": list(g.shape),
                "playable": bool(playable(g, game, goal_row=7 if g.shape[0] > 16 else 0))}
    return {"file": rel, "shape": list(g.shape), "playable": bool(playable(g, game))}


# Measured on ../shared/data/vglc with these checkers (tests/test_playability.py re-measures them); named as such,
# since a model's own training corpus (mario-gpt's copy for the shipped models) can differ (`sample` reports that).
ORIGINAL_RATES = {
    "mario": "VGLC's SMB: full levels 15 / 15; 14x28 windows 2472 / 2518 (98.2 %); 14x16 windows 2649 / 2698 (98.2 %)",
    "kid_icarus": "VGLC's: 6 / 6 full levels reach row 7 (Mario's arcs; also their highest annotated row with the Kid "
                  "Icarus arcs); 16 x 16 windows uncalibrated",
    "lode_runner": "VGLC's: all gold in one run 131 / 149 levels with a spawn; each gold reachable 140 / 149",
    "zelda": "VGLC's: 358 / 407 rooms with a door or stair (387 with water passable, 405 with water and blocks)",
}


# ---------------------------------------------------------------- demo

def demo_levels(out_dir: str, n: int = 8, seed: int = 0) -> dict:
    """A few seconds with the shipped model: n playable Mario windows and one 150-column level, their PNGs
    and a contact sheet in out_dir (the windows at the top level, the long level in full/)."""
    windows_report = sample_levels(out_dir, n=n, seed=seed)
    level_report = sample_levels(str(Path(out_dir) / "full"), n=1, length=150, seed=seed)
    return {"windows": windows_report, "level": level_report,
            "contact_sheet": str(Path(out_dir) / "contact_sheet.png")}


# ---------------------------------------------------------------- Prefect flows (one run per command)
# Coarse tasks that pass paths and small JSON; our stages cache by content, so Prefect's cache stays off.


def sample_summary(report: dict) -> str:
    r, d = report["raw_playability"], report["delivered"]
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    return (f"**{d['of']} {report['game']} {report['kind']}s**: raw playable {pct(r['rate'])} (of {r['of']} drawn), "
            f"delivered {pct(d['rate'])}; originals {report['originals_rate']}")
