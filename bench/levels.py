"""Level generation benchmark: VAE samples vs the original units vs a column-wise Markov chain trained on the
same units, under the same checkers and metrics (shared/notes/levels.md §3). One markdown table, printed and
written to outputs/bench/levels.md (+ levels.json).

    python bench/levels.py                                  # Mario windows + full levels, 1000 samples
    python bench/levels.py --games mario,lode_runner,zelda  # + Lode Runner and Zelda (trains small models, cached)
    python bench/levels.py --games mario,mario-columns      # + a Mario VAE over whole columns (--units columns)
    python bench/levels.py --games mario,mario-columns --seeds 5   # raw rows over 5 seeds -> levels-seeds.md
    python bench/levels.py --cond-model outputs/train/cvae-mario-...  # does a Mario cvae give what --cond asks?

Lode Runner models place exactly one spawn and train on mirrored copies too (flows/levels.py UNIQUE_TILES,
MIRROR); the Lode Runner rows end with the checker outcome per source (which condition fails, gold per level).

Mario uses the shipped models/pretrained/mario-vae (or --mario-model FOLDER) and the mario-gpt corpus it was
trained on; Lode Runner and Zelda train a model on ../shared/data/vglc (a cached stage).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flows.levels import (_training_units, check_units, default_temperature, full_levels,  # noqa: E402
                          delivery, resolve_level_model, sample_windows, train_levels, walk_windows)
from flows.settings import outputs_root  # noqa: E402
from formats.levels import diversity, novelty, tpkl, wilson, windows  # noqa: E402
from formats.playability import lode_runner_check, mario_pipes_ok, mario_playable  # noqa: E402
from models.checkpoints import read_config  # noqa: E402
from models.registry import load_model  # noqa: E402
from models.latent import latent_walk  # noqa: E402

VGLC = ROOT.parent / "shared" / "data" / "vglc"


class ColumnMarkov:
    """Baseline: a first-order Markov chain over whole columns (a column is one state), fit on the training
    units' column sequences; a sequence that reaches a column never followed by another restarts from a
    random first column (Snodgrass & Ontañón's simplest setting)."""

    def __init__(self, units: np.ndarray):
        self.rows = units.shape[1]
        cols = units.transpose(0, 2, 1)                                  # (N, cols, rows)
        self.vocab, inverse = np.unique(cols.reshape(-1, self.rows), axis=0, return_inverse=True)
        seq = inverse.reshape(cols.shape[:2])                            # (N, cols) column ids
        self.first = seq[:, 0]
        follow: dict[int, list[int]] = {}
        for a, b in zip(seq[:, :-1].ravel(), seq[:, 1:].ravel()):
            follow.setdefault(int(a), []).append(int(b))
        self.next = {a: np.array(b) for a, b in follow.items()}     # successors with repeats = counts

    def sample(self, n: int, width: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((n, self.rows, width), dtype=np.uint8)
        for i in range(n):
            c = self.first[rng.integers(len(self.first))]
            for x in range(width):
                out[i, :, x] = self.vocab[c]
                options = self.next.get(int(c))
                if options is None:                     # a dead end: restart from a first column
                    options = self.first
                c = options[rng.integers(len(options))]
        return out


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def row(name: str, grids: np.ndarray, ok: np.ndarray, train: np.ndarray, seconds: float | None, game: str,
        delivered: float | None = None, rejected: int | None = None, novel: bool = True) -> dict:
    lo, hi = wilson(int(ok.sum()), len(ok))
    nov = novelty(grids, train) if novel else {"novel": None, "nn_hamming": None}
    div = diversity(grids)
    return {"game": game, "source": name, "n": len(grids), "shape": "x".join(map(str, grids.shape[1:])),
            "playable": float(ok.mean()), "ci": [lo, hi], "delivered": delivered, "rejected": rejected,
            "novel": nov["novel"], "nn_hamming": nov["nn_hamming"], "pairwise": div["pairwise_hamming"],
            "distinct": div["distinct"], "tpkl2": tpkl(train, grids, 2), "tpkl3": tpkl(train, grids, 3),
            "pipes_ok": float(np.mean(mario_pipes_ok(grids))) if game == "mario" else None,
            "per_s": None if seconds is None else len(grids) / seconds,
            "why": lode_runner_failures(grids) if game == "lode_runner" else None}


def lode_runner_failures(grids: np.ndarray) -> dict:
    """Which condition of the Lode Runner checker (notes §4.3) each grid fails, and the gold per grid (a grid
    with little gold passes more easily; the originals hold 4 to 131, median 16)."""
    from collections import Counter

    checks = [lode_runner_check(g) for g in grids]
    why = Counter(c.get("reason") or ("playable" if c["all_gold"] else "gold reachable, not in one run"
                                      if c["each_gold"] else "some gold unreachable") for c in checks)
    return {"reasons": dict(why.most_common()), "gold_mean": float(np.mean([c["gold"] for c in checks])),
            "playable_with_4_gold": float(np.mean([c["all_gold"] and c["gold"] >= 4 for c in checks]))}


def windows_rows(game: str, net, train: np.ndarray, n: int, seed: int, spread: float) -> list[dict]:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    refill = torch.Generator().manual_seed(10_000 + seed)      # delivered rows' top-ups: raw rows never depend on them
    rows = []
    sub = train[rng.choice(len(train), min(n, len(train)), replace=False)]
    rows.append(row("originals (training units)", sub, check_units(game, train), train, None, game, novel=False))
    # n units drawn i.i.d. (own stream: the other rows' draws stay as they were): what a perfect copy of the
    # training distribution scores; its TPKL is the floor that sampling n windows puts under any model
    iid = train[np.random.default_rng([seed, 1]).choice(len(train), n)]
    rows.append(row("originals drawn i.i.d. (a perfect model)", iid, check_units(game, iid), train, None, game,
                    novel=False))
    for temperature, s, label in ((0.0, 1.0, "most likely tile"), (1.0, 1.0, "tiles drawn, T=1"),
                                  (1.0, spread, f"tiles drawn, T=1, spread {spread}")):
        t0 = time.perf_counter()
        with torch.no_grad():
            raw = sample_windows(net, n, gen, temperature=temperature, spread=s)
        ok = check_units(game, raw)
        seconds = time.perf_counter() - t0                       # sample + check, the raw rate
        seen: set[bytes] = set()
        accept = lambda g: list(g[delivery(game, g, train, None, seen)["keep"]])  # noqa: E731  what `sample` keeps

        delivered, drawn = accept(raw), n
        while len(delivered) < n and drawn < 10 * n:            # what `aeflow levels sample` does: resample
            with torch.no_grad():
                more = sample_windows(net, n, refill, temperature=temperature, spread=s)
            delivered += accept(more)
            drawn += n
        rows.append(row(f"VAE raw ({label})", raw, ok, train, seconds, game))
        if delivered:
            d = np.stack(delivered[:n])
            rows.append(row(f"VAE delivered ({label})", d, check_units(game, d), train, None, game,
                            delivered=1.0, rejected=drawn - len(delivered)))
        else:                                                   # nothing acceptable in 10 n draws
            rows.append({**{k: None for k in rows[-1]}, "game": game, "shape": rows[-1]["shape"], "n": 0,
                         "source": f"VAE delivered ({label}): none in {drawn} draws", "playable": None,
                         "ci": [None, None], "delivered": 0.0, "rejected": drawn})
    chain = ColumnMarkov(train)
    t0 = time.perf_counter()
    mk = chain.sample(n, train.shape[2], rng)
    mk_ok = check_units(game, mk)
    rows.append(row("column Markov chain", mk, mk_ok, train, time.perf_counter() - t0, game))
    playable = check_units(game, train)
    if not playable.all():       # the baseline for a model trained on the playable units only (flows/levels.py)
        chain = ColumnMarkov(train[playable])
        t0 = time.perf_counter()
        mk = chain.sample(n, train.shape[2], np.random.default_rng([seed, 2]))
        rows.append(row("column Markov chain, playable units only", mk, check_units(game, mk), train,
                        time.perf_counter() - t0, game))
    return rows


def full_rows(net, train: np.ndarray, originals: list[np.ndarray], n: int, length: int, seed: int,
              spread: float) -> list[dict]:
    """Mario full-length levels (`length` columns): the latent walk raw and seam-checked (delivered), at spread 1
    and `spread`, the Markov chain, and the originals. Metrics on their 14 x 28 non-overlapping windows against
    training windows."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cols = net.cfg.shape[1]

    def as_windows(levels):
        return np.concatenate([windows(g, cols, cols) for g in levels])

    def full_row(name, levels, seconds, **kw):
        ok = np.array([mario_playable(g, mode="level") for g in levels])      # widths may differ (originals)
        r = row(name, as_windows(levels), ok, train, None, "mario", **kw)
        r.update(n=len(levels), shape=f"14x{length}" if name != "originals (full levels)" else "14xW",
                 per_s=None if seconds is None else len(levels) / seconds)
        return r

    out = [full_row("originals (full levels)", originals, None, novel=False)]
    default = default_temperature(net)
    for s, temperature in ((1.0, default), (spread, 1.0)):      # as the windows rows: the default, and T=1 + spread
        label = ("" if temperature == 0 else ", tiles drawn, T=1") + ("" if s == 1.0 else f", spread {s}")
        t0 = time.perf_counter()
        with torch.no_grad():
            z = torch.stack([latent_walk(-(-length // cols), net.cfg.latent, gen, spread=s) for _ in range(n)])
            raw = list(walk_windows(net, z, gen, None, temperature)[..., :length])
        out.append(full_row(f"VAE latent walk raw{label}", raw, time.perf_counter() - t0))
        t0 = time.perf_counter()
        with torch.no_grad():
            levels, rejected, _ = full_levels(net, n, length, gen, spread=s, temperature=temperature)
        out.append(full_row(f"VAE walk, seams checked{label}", levels, time.perf_counter() - t0, delivered=1.0,
                            rejected=rejected))
    chain = ColumnMarkov(train)
    t0 = time.perf_counter()
    out.append(full_row("column Markov chain", list(chain.sample(n, length, rng)), time.perf_counter() - t0))
    return out


def seed_table(per_seed: list[list[dict]]) -> str:
    """Raw rows and the i.i.d. originals over seeds (each seed redraws the samples and the chain's): medians and
    ranges, and in how many seeds each row's TPKL is below the same seed's Markov chain (the chain that follows
    it in the rows)."""
    lines = ["| game | source | seeds | raw playable % median (min-max) | novel % median (min-max) | TPKL 2x2 median "
             "| TPKL 3x3 median | 2x2 below the chain | 3x3 below the chain |", "|" + "---|" * 9]
    for i, r in enumerate(per_seed[0]):
        if not r["source"].startswith(("originals drawn", "VAE raw", "column Markov")):
            continue
        runs = [rows[i] for rows in per_seed]
        chain = [next(x for x in rows[i:] if "Markov" in x["source"] and x["game"] == r["game"]) for rows in per_seed]
        med = lambda k: float(np.median([x[k] for x in runs]))  # noqa: E731
        span = lambda k: f"{pct(med(k))} ({pct(min(x[k] for x in runs))}-{pct(max(x[k] for x in runs))})"  # noqa: E731
        below = [sum(x[k] < c[k] for x, c in zip(runs, chain)) for k in ("tpkl2", "tpkl3")]
        is_chain = "Markov" in r["source"]
        lines.append(f"| {r['game']} | {r['source']} | {len(runs)} | {span('playable')} | "
                     f"{'—' if r['novel'] is None else span('novel')} | "
                     f"{med('tpkl2'):.4f} | {med('tpkl3'):.4f} | {'—' if is_chain else below[0]} | "
                     f"{'—' if is_chain else below[1]} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("| game | source | n | unit | playable % (95 % CI) | delivered % | rejected | novel % | NN Hamming | "
            "pairwise Hamming | distinct % | TPKL 2x2 | TPKL 3x3 | pipes ok % | samples/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        f = lambda v, d=3: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
        ci = "—" if r["playable"] is None else f"{pct(r['playable'])} ({pct(r['ci'][0])}-{pct(r['ci'][1])})"
        cells = [r["game"], r["source"], r["n"], r["shape"], ci, pct(r["delivered"]),
                 "—" if r["rejected"] is None else r["rejected"], pct(r["novel"]), f(r["nn_hamming"]),
                 f(r["pairwise"]), pct(r["distinct"]), f(r["tpkl2"], 4), f(r["tpkl3"], 4), pct(r["pipes_ok"]),
                 "—" if r["per_s"] is None else round(r["per_s"])]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


CARD = """# {name}

{what}
Trained with the project's own code (`{command}`, i.e.
`flows.levels.train_levels("mario"{units_arg})` with its other defaults) and shipped as float16 safetensors
({size_kb:.0f} kB, {params:,} parameters); loading casts back to float32.

- **Data**: the 15 Super Mario Bros levels in the string constant of the `mario-gpt` 0.1.3 wheel (MIT;
  the VGLC annotated-path files minus their first 4 columns, path marks read as empty tiles; VGLC: Summerville,
  Snodgrass, Mateas, Ontañón 2016, MIT). {units} stride-1 windows of 14 x 28; level(s) {held_out} held out
  for validation ({val_windows} windows), {train_windows} for training{left_out}.
- **Model**: widths {widths}, latent {latent}, beta {beta}{extra_model}.
- **Training**: {steps:,} steps of batch {batch}, AdamW (peak lr {lr:g}, warm-up then cosine), {seconds:.0f} s on
  the shared 2-core CPU{cores}; kept weights: best validation ELBO {elbo:.1f} nats per window, tile accuracy
  {acc:.3f}, KL {kl:.1f} nats.
- **Playability** (jump-arc checker, notes §4.1): {playability}. The originals' windows pass at
  98.1 % (mario-gpt copy) / 98.2 % (VGLC).

Reproduce: `{command}` (same defaults), then `python bench/levels.py --ship FOLDER`.
"""
WHAT = {
    "mario-cvae": "Conditional VAE over whole columns (`cvae` with `columns`), conditioned on each 14 x 28 window's "
                  "enemies, pipes and\ngaps, bucketed none/few/some/many (flows/levels.py COND_EDGES): a window is 28 "
                  "tokens, each one of the\n{n_columns} distinct columns of the training windows, with an "
                  "autoregressive head over the {ar} before it.\nWhat `aeflow levels sample --cond enemies=many` uses "
                  "(sampled at T = 1).",
    "mario-vae": "Convolutional VAE (`vae`, categorical decoder over the 13 Super Mario Bros tiles) on 14 x 28 "
                 "windows, the\ndefault model of `aeflow levels interpolate` (its z holds a window).",
    "mario-columns": "Convolutional VAE over whole columns (`vae` with `columns`): a 14 x 28 window is 28 tokens, "
                     "each one of the\n{n_columns} distinct columns of the training windows, and an autoregressive "
                     "head lets each column depend on\nthe {ar} before it. The default model of `aeflow levels "
                     "sample`, drawn at T = 1.",
}


def interpolate_table(pairs: int, steps: int = 8, seed: int = 0) -> str:
    """`levels interpolate` settings over `pairs` seeded pairs of the mario-gpt levels (cut to the shorter one):
    in the middle steps (the ends are the models' decodings of A and B), enemies and ? blocks per 100 columns
    beside the corpus's rate, the share of steps whose pipes are all whole and of playable steps; and the share
    of the ends' tiles that come back."""
    import tempfile

    from flows.levels import interpolate_levels
    from formats.levels import grid_to_level, mario_gpt_levels

    levels = mario_gpt_levels()
    rng = np.random.default_rng(seed)
    chosen = [tuple(rng.choice(len(levels), 2, replace=False)) for _ in range(pairs)]
    settings = [("mario-vae", False, 0.0), ("mario-vae", True, 0.0), ("mario-vae", True, 1.0),
                ("mario-columns", True, 0.0), ("mario-columns", False, 0.0), ("mario-columns", True, 1.0)]
    lines = [f"Interpolation: {pairs} pairs of the {len(levels)} mario-gpt levels (seed {seed}), {steps} steps; middle "
             f"steps only for the rates; corpus = the model's training windows",
             "", "| model | path | T | enemies / 100 col (corpus) | ? blocks / 100 col (corpus) | steps with whole pipes "
             "| playable steps | ends' tiles back | s / pair |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, j in chosen:
            for k in (i, j):
                (Path(tmp) / f"{k}.txt").write_text(grid_to_level(levels[k][1], "mario"))
        for model, slerp, t in settings:
            e, q, pipes, play, ends, corpus, secs = [], [], [], [], [], None, 0.0
            for i, j in chosen:
                t0 = time.perf_counter()
                r = interpolate_levels(f"{tmp}/{i}.txt", f"{tmp}/{j}.txt", f"{tmp}/out", steps, model,
                                       spherical=slerp, temperature=t, seed=seed)
                secs += time.perf_counter() - t0
                mid, per = r["stats"]["steps"][1:-1], 100 / r["width"]
                e += [s["enemies"] * per for s in mid]
                q += [s["question_blocks"] * per for s in mid]
                pipes += [s["pipes_ok"] for s in mid]
                play += r["playable"][1:-1]
                ends += list(r["ends_match"].values())
                c = r["stats"]["corpus_per_same_width"]
                corpus = (c["enemies"] * per, c["question_blocks"] * per)
            lines.append(f"| {model} | {'slerp' if slerp else 'lerp'} | {t:g} | {np.mean(e):.2f} ({corpus[0]:.2f}) | "
                         f"{np.mean(q):.2f} ({corpus[1]:.2f}) | {np.mean(pipes):.0%} | {np.mean(play):.0%} | "
                         f"{np.mean(ends):.1%} | {secs / pairs:.2f} |")
    return "\n".join(lines)


def unseen_table(games: list[str], n: int, splits: int = 10) -> str:
    """TPKL of real levels the training set never saw: the game's levels split in half at random (`splits`
    times), the held-out half's units (up to n) against the other half's, beside a column Markov chain fit on
    that half. Says whether a TPKL below the chain's is within reach of novel content at all."""
    from flows.levels import ingest_levels, load_ingest

    lines = ["| game | levels | held-out units | TPKL 2x2 unseen levels | TPKL 2x2 Markov | TPKL 3x3 unseen levels "
             "| TPKL 3x3 Markov | splits where unseen < Markov (2x2) |", "|" + " --- |" * 8]
    for game in games:
        folder = ingest_levels(game) if game == "mario" else ingest_levels(game, str(VGLC / game))
        units, unit_level, levels, _ = load_ingest(folder)
        res = []
        for s in range(splits):
            rng = np.random.default_rng(100 + s)
            held = np.isin(unit_level, rng.permutation(len(levels))[: len(levels) // 2])
            rest, sub = units[~held], units[held][rng.permutation(int(held.sum()))[:n]]
            chain = ColumnMarkov(rest).sample(len(sub), units.shape[2], rng)
            res.append((len(sub), tpkl(rest, sub, 2), tpkl(rest, chain, 2), tpkl(rest, sub, 3), tpkl(rest, chain, 3)))
        med = np.median(np.array(res), 0)
        wins = sum(r[1] < r[2] for r in res)
        lines.append(f"| {game} | {len(levels)} | {med[0]:.0f} | {med[1]:.3f} | {med[2]:.4f} | {med[3]:.3f} | "
                     f"{med[4]:.4f} | {wins} of {splits} |")
    return "\n".join(lines) + ("\n\nMedians over the splits. Each split holds out half the levels, chosen at random; "
                               "TPKL is measured against the other half, as the bench measures samples against the "
                               "training units.")


def ship(src: Path, cores: str = "") -> Path:
    """Copy a trained Mario model into models/pretrained/mario-vae/ (mario-columns/ for --units columns, mario-cvae/
    for a column cvae) as float16 with a model card. `cores`: how training was pinned, if it was (", on one core")."""
    import shutil

    from flows.catalog import PRETRAINED
    from models.checkpoints import save_model

    cfg = read_config(src)
    columns, kind = bool(cfg["model"].get("columns")), cfg["model"]["kind"]
    if kind == "cvae" and not columns:
        raise ValueError(f"{src}: the shipped Mario cvae is a column model (aeflow levels train --units columns "
                         "--model cvae)")
    name = "mario-cvae" if kind == "cvae" else "mario-columns" if columns else "mario-vae"
    dst = PRETRAINED / name
    if dst.exists():
        shutil.rmtree(dst)
    extra = {k: v for k, v in cfg.items() if k != "model"}
    extra["shipped_from"] = src.name
    save_model(load_model(src), dst, cfg["model"], dtype=torch.float16, extra=extra)
    m, t, d = cfg["model"], cfg["train"], cfg["data"]
    every = "left_out_unplayable" not in d                 # trained before PLAYABLE_ONLY, or with --all-units
    (dst / "MODEL_CARD.md").write_text(CARD.format(
        name=name, what=WHAT[name].format(n_columns=len(m.get("columns", ())), ar=m.get("ar")),
        command="aeflow levels train" + (" --units columns" if columns else "")
        + (" --model cvae" if kind == "cvae" else "") + (" --all-units" if every else ""),
        units_arg=(', units="columns"' if columns else "") + (', kind="cvae"' if kind == "cvae" else "")
        + (", playable_only=False" if every else ""), cores=cores,
        left_out="" if every else f" (the playable ones: the {d['left_out_unplayable']} unplayable training windows, "
                                  "cuts that start over a gap, are left out; flows/levels.py PLAYABLE_ONLY)",
        playability="raw and delivered for each condition in the table below" if kind == "cvae" else
        "`python bench/levels.py`, 1000 samples; fill in from outputs/bench/levels.md",
        extra_model=f", ar {m['ar']}, {len(m['columns'])} column tokens" if columns else "",
        size_kb=(dst / "model.safetensors").stat().st_size / 1024, params=cfg["parameters"],
        units=d["train_windows"] + d["val_windows"], held_out=", ".join(d["held_out"]), val_windows=d["val_windows"],
        train_windows=d["train_windows"], widths=tuple(m["widths"]), latent=m["latent"], beta=m["beta"],
        steps=cfg["steps"], batch=t["batch_size"], lr=t["lr"], seconds=cfg["seconds"], elbo=cfg["metrics"]["val_elbo"],
        acc=cfg["metrics"]["val_acc"], kl=cfg["metrics"]["val_kl"]))
    if kind == "cvae":                                    # what it is for, measured on these float16 weights
        with (dst / "MODEL_CARD.md").open("a") as card:
            card.write("\n## What `--cond` gives (these float16 weights; `python bench/levels.py --cond-model "
                       f"models/pretrained/{name}`)\n\n" + cond_table(dst, 1000, 0) + "\n")
    shutil.copy(src / "curve.png", dst / "curve.png")
    return dst


def cond_table(folder: Path, n: int, seed: int) -> str:
    """How well a feature-conditioned Mario cvae does what it is asked: per variable and bucket, `n` windows
    sampled with that bucket asked (the other variables drawn as in the corpus, as `levels sample --cond`
    does): the share that lands in the asked bucket (raw, most likely tile and tiles drawn at T=1), beside
    the share of that bucket among the plain VAE's samples and among the training windows; then what delivery
    keeps (playable, pipes well formed, new, distinct, as asked: what `sample` delivers, at the model's default
    temperature) and how many draws one delivered window costs. A column cvae is compared with the shipped
    column VAE."""
    from flows.levels import COND_LEVELS, COND_NAMES, fill_cond, mario_conditions

    net, cfg = load_model(folder), read_config(folder)
    plain_name = "mario-columns" if net.cfg.columns else "mario-vae"
    plain = load_model(resolve_level_model(plain_name))
    t_net = default_temperature(net)
    train, _ = _training_units(cfg)
    known = mario_conditions(train)
    gen = torch.Generator().manual_seed(seed)
    free = mario_conditions(sample_windows(plain, n, gen, temperature=default_temperature(plain)))
    lines = ["| variable | asked | in asked bucket, raw (most likely) | raw (T=1) | plain VAE | training windows "
             f"| raw playable (T={t_net:g}) | delivered (playable, new, distinct, as asked) of drawn (T={t_net:g}) "
             "| draws per delivered |", "|---" * 9 + "|"]
    for j, name in enumerate(COND_NAMES):
        for level, label in enumerate(COND_LEVELS):
            asked = np.full((1, len(COND_NAMES)), -1)
            asked[0, j] = level
            got = {}
            for t in (0.0, 1.0):
                g = sample_windows(net, n, gen, fill_cond(asked, n, known, gen), t)
                got[t] = (g, mario_conditions(g)[:, j] == level)
            g = got[t_net][0]
            d = delivery("mario", g, train, asked, set())
            playable, keep = d["playable"], d["keep"]
            lines.append(f"| {name} | {label} | {pct(got[0.0][1].mean())} | {pct(got[1.0][1].mean())} | "
                         f"{pct(np.mean(free[:, j] == level))} | {pct(np.mean(known[:, j] == level))} | "
                         f"{pct(playable.mean())} | {pct(keep.mean())} | "
                         f"{1 / keep.mean() if keep.any() else float('inf'):.1f} |")
    return "\n".join(lines) + (f"\n\n{folder.name}: {cfg.get('steps')} steps, {cfg.get('seconds', 0):.0f} s on "
                               f"{cfg.get('device')}; {n} windows per row, seed {seed}; plain VAE: the shipped "
                               f"{plain_name} at T={default_temperature(plain):g}")


BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend_table(n: int, steps: int, seed: int, model: Path | None = None) -> str:
    """Game blending (Sarkar et al.): a cvae on Mario + Kid Icarus 16 x 16 units (union legend) conditioned on
    the game, decoded under the soft condition (1 - W, W) for W = weight of Kid Icarus. Per row: share of
    Mario-only / Kid-Icarus-only tiles among non-empty cells, each game's rule (Mario left to right, Kid Icarus
    bottom to top with wrap-around; flows/levels.py blend_playable), either, novelty vs the training units."""
    from flows.levels import blend_condition, ingest_levels, load_ingest
    from formats.levels import game_tile_shares
    from formats.playability import blend_playable

    game = "mario+kid_icarus"
    t0 = time.perf_counter()
    folder = model or train_levels(game, str(VGLC / "kid_icarus"), kind="cvae", training={"steps": steps},
                                   progress=False).folder
    cfg, net = read_config(folder), load_model(folder)
    ingest = ingest_levels(game, cfg["data"]["data"])                    # the cached blend stage
    units, label = load_ingest(ingest)[0], np.load(ingest.folder / "unit_game.npy")     # (N, 16, 16), (N,)
    gen = torch.Generator().manual_seed(seed)
    head = ("| source | n | Mario-only tiles % | KI-only tiles % | Mario rule % | KI rule % | either % | novel % | "
            "NN Hamming |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def line(name, g, novel=True):
        share, rules = game_tile_shares(g, game), blend_playable(g, game)
        nov = novelty(g, units) if novel else {"novel": None, "nn_hamming": None}
        nn = "—" if nov["nn_hamming"] is None else f"{nov['nn_hamming']:.3f}"
        lines.append(f"| {name} | {len(g)} | {pct(share['mario'])} | {pct(share['kid_icarus'])} | "
                     f"{pct(rules['mario'].mean())} | {pct(rules['kid_icarus'].mean())} | "
                     f"{pct((rules['mario'] | rules['kid_icarus']).mean())} | {pct(nov['novel'])} | "
                     f"{nn} |")

    for i, name in enumerate(("Mario originals (16x16, 2 sky rows)", "Kid Icarus originals (16x16)")):
        line(name, units[label == i], novel=False)
    for w in BLEND_WEIGHTS:
        g = sample_windows(net, n, gen, blend_condition(w))
        line(f"cvae W={w:g} (raw, most likely tile)", g)
    return "\n".join(lines) + (f"\n\n{folder.name}: {cfg.get('steps')} steps, {cfg.get('seconds', 0):.0f} s on "
                               f"{cfg.get('device')} (bench total {time.perf_counter() - t0:.0f} s); W = weight of Kid "
                               f"Icarus in the decoder's condition; {n} samples per row, seed {seed}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", default="mario")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--full", type=int, default=100, help="full-length Mario levels to generate")
    ap.add_argument("--length", type=int, default=200, help="columns of a full-length Mario level")
    ap.add_argument("--mario-model", default=None, help="Mario model folder (default: the shipped mario-vae)")
    ap.add_argument("--columns-model", default=None,
                    help="the mario-columns model folder (default: the shipped models/pretrained/mario-columns)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps for the Lode Runner / Zelda models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", type=float, default=0.6,
                    help="latent spread of the extra rows (z ~ N(0, spread^2 I); `levels sample --spread`)")
    ap.add_argument("--cond-model", type=Path, default=None,
                    help="only the condition table of this Mario cvae (aeflow levels train --model cvae) -> levels-cond.md")
    ap.add_argument("--blend", action="store_true",
                    help="only the Mario + Kid Icarus blend table (trains a game cvae for --steps) -> levels-blend.md")
    ap.add_argument("--blend-model", type=Path, default=None, help="use this blend cvae instead of training one")
    ap.add_argument("--unseen", action="store_true",
                    help="only the TPKL of real levels left out of training (half the levels, 10 splits) beside a "
                         "Markov chain fit on the rest -> levels-unseen.md")
    ap.add_argument("--seeds", type=int, default=0,
                    help="only the window rows over seeds 0..K-1: medians, ranges and how often each row's TPKL is "
                         "below the chain's -> levels-seeds.md")
    ap.add_argument("--interpolate", type=int, default=0,
                    help="only the `levels interpolate` settings over this many pairs of levels -> levels-interpolate.md")
    ap.add_argument("--ship", type=Path, default=None,
                    help="copy this trained model to models/pretrained/mario-vae (mario-columns for --units columns, "
                         "mario-cvae for a column cvae) and stop")
    ap.add_argument("--ship-cores", default="", help='how training was pinned, for the card (", on one core")')
    args = ap.parse_args()
    if args.ship:
        print(ship(args.ship, args.ship_cores))
        return
    torch.set_num_threads(2)
    if args.blend or args.cond_model or args.unseen or args.interpolate:     # a table of its own
        if args.interpolate:
            md, name = interpolate_table(args.interpolate, seed=args.seed), "levels-interpolate.md"
        elif args.unseen:
            md, name = unseen_table(args.games.split(","), args.n), "levels-unseen.md"
        elif args.blend:
            md, name = blend_table(args.n, args.steps, args.seed, args.blend_model), "levels-blend.md"
        else:
            md, name = cond_table(args.cond_model, args.n, args.seed), "levels-cond.md"
        print(md)
        (outputs_root() / "bench").mkdir(parents=True, exist_ok=True)
        (outputs_root() / "bench" / name).write_text(md + "\n")
        return
    rows, info, per_seed = [], {}, [[] for _ in range(args.seeds)]
    for name in args.games.split(","):
        game = "mario" if name == "mario-columns" else name
        if name == "mario":
            folder = resolve_level_model(args.mario_model or "mario-vae")
        elif name == "mario-columns":
            folder = resolve_level_model(args.columns_model or "mario-columns")
        else:
            folder = train_levels(game, str(VGLC / game), training={"steps": args.steps}, progress=False).folder
        cfg = read_config(folder)
        net = load_model(folder)
        train, originals = _training_units(cfg)
        info[name] = {"model": str(folder), "parameters": cfg.get("parameters"), "steps": cfg.get("steps"),
                      "val": cfg.get("metrics"), "training_units": len(train), "originals": originals}
        if args.seeds:
            for k in range(args.seeds):
                per_seed[k] += [{**r, "game": name} for r in windows_rows(game, net, train, args.n, k, args.spread)]
            continue
        mine = windows_rows(game, net, train, args.n, args.seed, args.spread)
        if game == "mario" and args.full:
            from flows.levels import ingest_levels, load_ingest

            _, _, levels, _ = load_ingest(ingest_levels("mario", str(VGLC / "super_mario_bros")) if VGLC.is_dir()
                                          else ingest_levels("mario"))
            mine += full_rows(net, train, [g for _, g in levels], args.full, args.length, args.seed, args.spread)
        rows += [{**r, "game": name} for r in mine]
    if args.seeds:
        md = seed_table(per_seed) + f"\n\n{args.n} windows per row and seed; models: " + ", ".join(
            f"{k} {Path(v['model']).name}" for k, v in info.items())
        print(md)
        (outputs_root() / "bench").mkdir(parents=True, exist_ok=True)
        (outputs_root() / "bench" / "levels-seeds.md").write_text(md + "\n")
        return
    md = table(rows)
    why = [f"- {r['game']} {r['source']}: {r['why']}" for r in rows if r.get("why")]
    if why:
        md += "\n\nLode Runner checker outcomes (reason, gold per level, playable with >= 4 gold):\n" + "\n".join(why)
    print(md)
    out = outputs_root() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "levels.md").write_text(md + "\n")
    (out / "levels.json").write_text(json.dumps({"rows": rows, "models": info, "args": vars(args)}, indent=2) + "\n")
    print(f"\nmodels: {json.dumps(info, indent=1)}\nwritten: {out / 'levels.md'}")


if __name__ == "__main__":
    main()
