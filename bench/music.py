"""Music benchmark: our conv VAE vs a first-order Markov chain vs the held-out data itself, on 2-bar and 8-bar
Essen melodies (music21 corpus, 4/4 2/2 2/4), 4-bar JSB chorales (the standard split, ../shared/data) and 4-bar
Bach chorales from music21's corpus (the shipped chorale model; held out: 10 % of the chorales).

    python bench/music.py                       # everything; trains the models first unless cached (GPU: ~3 min)
    python bench/music.py --tasks melody2 --n 200     # a quicker look
    python bench/music.py --train-only --device cuda  # on a GPU machine: fills outputs/train/ (same stage keys)
    python bench/music.py --ship outputs/train/vae-music-melody-2bar-essen-<key>   # -> models/pretrained/music-melody-2bar
    python bench/music.py --ship outputs/train/cvae-music-melody-2bar-essen-<key> --name music-melody-2bar-key
    python bench/music.py --ship outputs/train/cvae-music-chorale-4bar-bach-<key> \
        --name music-chorale-4bar-key

Metrics (formats/music_metrics.py; definitions in shared/notes/music.md table F): reconstruction accuracy of
held-out windows from the posterior mean and from a posterior sample (MusicVAE's per-step accuracy); Yang & Lerch
overlapped areas (OA, 1 = same distribution as held-out data) of pitch-class histogram, note-length histogram,
mean interval and pitch range; MuseGAN empty-bar rate, used pitch classes per bar, qualified notes (>= an 8th);
in-scale rate; soprano-bass tonal distance (chorales); copy rate (generated windows equal to a training window);
clips per second (windows generated per second, CPU). The VAE decodes prior samples either greedily (argmax per
cell) or by drawing each cell from softmax(logits / T). Its clips come out in all 12 keys alike (it learnt from
copies transposed into every key); "corpus keys" rows move each clip to a tonic drawn as often as the corpus
uses it for that mode, as `aeflow music sample` does (its default: T=1, corpus keys). 8-bar rows add the 2-bar
model's latent walk, the way `aeflow music sample --bars 8` makes 8 bars from the shipped model; chorale rows
add a key-conditioned cvae (`--condition key`) asked for keys drawn from the corpus. The data row
compares one half of the held-out windows with the other. Prints one markdown table and writes it to
outputs/bench/music.md (+ .json).
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flows.music import BAR, augment, generate_rolls, ingest_music, key_counts, train_music, window_split  # noqa: E402
from flows.settings import outputs_root  # noqa: E402
from flows.stages import open_stage  # noqa: E402
from flows.train import train_windows  # noqa: E402
from formats import music_metrics as mm  # noqa: E402
from formats.music import CHORALE, HOLD, OFFSET, REST, canonical, cut  # noqa: E402
from models.registry import load_model  # noqa: E402

JSB = ROOT.parent / "shared" / "data" / "jsb_chorales" / "Jsb16thSeparated.json"
# optimiser steps of 128 windows per model; with the ar head the held-out ELBO peaks near step 1,500 and then
# falls (the best weights are kept), so it trains for less
STEPS = {"melody2": 10000, "melody8": 10000, "jsb4": 6000, "jsb4 ar": 2000, "bach4": 6000}
# bach4: the chorale cvae that ships as music-chorale-4bar-key, trained as `aeflow music train --corpus bach --mode
# chorale --bars 4 --condition key --latent 32 --beta 0.5 --batch-size 128 --steps 6000 --epoch-steps 500` does
# (same stage key, so either run fills the other's cache); latent 32 keeps its float16 weights under 2 MB
BACH_MODEL = {"widths": [64, 128, 256], "latent": 32, "beta": 0.5}


class Markov:
    """First-order Markov chain over tokens, one per voice (the voices of a chorale are sampled independently),
    trained on the same windows as the VAE; add-alpha smoothing."""

    def __init__(self, x: np.ndarray, vocab: int, alpha: float = 0.01):
        v = x.shape[1]
        self.init = np.full((v, vocab), alpha)
        self.trans = np.full((v, vocab, vocab), alpha)
        for i in range(v):
            np.add.at(self.init[i], x[:, i, 0], 1)
            np.add.at(self.trans[i], (x[:, i, :-1].ravel(), x[:, i, 1:].ravel()), 1)
        self.init /= self.init.sum(-1, keepdims=True)
        self.trans = np.cumsum(self.trans / self.trans.sum(-1, keepdims=True), -1)

    def sample(self, n: int, steps: int, rng: np.random.Generator) -> np.ndarray:
        v = self.init.shape[0]
        out = np.zeros((n, v, steps), np.int64)
        for i in range(v):
            out[:, i, 0] = rng.choice(len(self.init[i]), n, p=self.init[i])
            for t in range(1, steps):
                cdf = self.trans[i, out[:, i, t - 1]]                           # (n, vocab)
                out[:, i, t] = np.minimum((cdf < rng.random((n, 1))).sum(1), cdf.shape[1] - 1)
        return out


def jsb_rolls(path: Path, split: str) -> list[np.ndarray]:
    """Coconet-format JSB (T, 4) MIDI per 16th, -1 silent -> (4, T) tokens. That format has no onsets: equal
    neighbouring steps are one note (a repeated note reads as a held one)."""
    data = json.loads(path.read_text())[split]
    rolls = []
    for piece in data:
        p = np.array(piece, dtype=np.int64).T                                  # (4, T)
        tok = np.where(p < 0, REST, p - CHORALE.lo + OFFSET)
        same = np.zeros_like(p, dtype=bool)
        same[:, 1:] = (p[:, 1:] == p[:, :-1]) & (p[:, 1:] >= 0)
        rolls.append(np.where(same, HOLD, tok))
    return rolls


def jsb_windows(path: Path, split: str, steps: int = 64, hop: int = 16) -> np.ndarray:
    """4-bar windows, hop one bar from step 0 (the format has no bar lines), not all silent. A note held into
    a window is restated there (as the ingest does): dropping it made a silent first bar in 0.6 % of voice-bars."""
    out = []
    for r in jsb_rolls(path, split):
        for s in range(0, r.shape[1] - steps + 1, hop):
            w = canonical(cut(r, s, s + steps, CHORALE.lo))
            if (w >= OFFSET).any():
                out.append(w)
    return np.stack(out)


def recon_accuracy(model, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[float, float]:
    """Held-out reconstruction accuracy from the posterior mean and from a posterior sample."""
    with torch.no_grad():
        acc_mean = mm.reconstruction_accuracy(x.numpy(), model.reconstruct(x, cond).numpy())
        mu, logvar = model.encode(x, cond)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
        return acc_mean, mm.reconstruction_accuracy(x.numpy(), model.draw(model.decode(z, cond)).numpy())


def evaluate(name: str, folder: str | None, x_train: np.ndarray, x_held: np.ndarray, n: int, enc, counts,
             walk: str | None = None, keyed: dict[str, str] | None = None, ideal: np.ndarray | None = None,
             seed: int = 0) -> list[dict]:
    """Rows: held-out data (one half vs the other), Markov chain, the VAE in `folder` if any (prior samples as
    drawn, in all 12 keys alike; and as `aeflow music sample` gives them, each clip moved to a key drawn from
    `counts`, the corpus's keys before transposition); `walk`: a shorter-window model's latent walk to the same length;
    `keyed`: key-conditioned cvaes (label -> folder) asked for keys drawn from `counts`; `ideal`: training
    windows scored as if a model had drawn them (what a perfect fit of the training split would score).
    `seed` draws the clips, the Markov chain's clips and the split of the held-out rows in two."""
    lo, chorale = enc.lo, enc.voices > 1
    rng = np.random.default_rng(seed)
    held = x_held[rng.permutation(len(x_held))]
    ref, other = held[: len(held) // 2], held[len(held) // 2:]
    steps, vocab = x_train.shape[2], int(max(x_train.max(), x_held.max(), enc.vocab - 1)) + 1
    x = torch.from_numpy(held[: min(len(held), 2000)])
    accs, vaes = {}, {}                                 # vaes: label -> (rolls, seconds, the model's accuracy key)
    bars = steps // BAR
    if folder:                                          # a plain VAE's rows (a task may have cvaes only)
        model = load_model(Path(folder))
        accs["VAE"] = recon_accuracy(model, x)
        for label, greedy, temperature in (("VAE greedy", True, 1.0), ("VAE T=0.7", False, 0.7)):
            t0 = time.perf_counter()
            rolls = model.sample(n, torch.Generator().manual_seed(seed), temperature=temperature, greedy=greedy).numpy()
            vaes[label] = (np.stack([canonical(w) for w in rolls]), time.perf_counter() - t0, "VAE")
        for temperature in (0.7, 1.0):
            t0 = time.perf_counter()
            rolls = generate_rolls(model, enc, bars, n, bars, seed=seed, temperature=temperature, key_counts=counts)
            vaes[f"VAE T={temperature:g}, corpus keys"] = (np.stack(rolls), time.perf_counter() - t0, "VAE")
    if walk:
        short = load_model(Path(walk))
        window = short.cfg.shape[1] // BAR
        for temperature in (0.7, 1.0):
            t0 = time.perf_counter()
            rolls = generate_rolls(short, enc, window, n, bars, seed=seed, temperature=temperature, key_counts=counts)
            vaes[f"{window}-bar VAE walk T={temperature:g}, corpus keys"] = (np.stack(rolls), time.perf_counter() - t0,
                                                                               None)
    for kind, f in (keyed or {}).items():
        cvae = load_model(Path(f))
        for temperature in (0.7, 1.0):
            t0 = time.perf_counter()
            rolls = generate_rolls(cvae, enc, bars, n, bars, seed=seed, temperature=temperature, key_counts=counts,
                                   cond_cols=[1, 2])
            vaes[f"{kind} T={temperature:g}, corpus keys"] = (np.stack(rolls), time.perf_counter() - t0, kind)
        accs[kind] = recon_accuracy(cvae, x, torch.from_numpy(mm.estimate_keys(x.numpy(), lo)))
    if ideal is not None:
        pick = np.random.default_rng(seed + 1).permutation(len(ideal))[:n]            # rng stays the Markov chain's
        vaes["training windows (a perfect fit)"] = (ideal[pick], None, None)
    chain = Markov(x_train, vocab)
    t0 = time.perf_counter()
    mk = chain.sample(n, steps, rng)
    mk_s = time.perf_counter() - t0
    mk = np.stack([canonical(w) for w in mk])

    rows = []
    sets = [("held-out data", other[:n], None, None), ("Markov chain", mk, mk_s, None)]
    sets += [(k, *v) for k, v in vaes.items()]
    for label, rolls, seconds, acc in sets:
        oa = mm.overlap(list(ref), list(rolls), lo)
        st = mm.set_stats(list(rolls), lo)
        row = {"task": name, "model": label, "oa_pch": oa["pitch_classes"]["oa"], "oa_nlh": oa["note_lengths"]["oa"],
               "oa_pi": oa["interval"]["oa"], "oa_pr": oa["pitch_range"]["oa"], "eb": st["empty_bars"], "upc": st["upc"],
               "qn": st["qualified"], "in_scale": st["in_scale"], "td": st.get("tonal_distance"),
               "copy": mm.copy_rate(rolls, x_train) if label != "held-out data" else None,
               "clips_per_s": round(len(rolls) / seconds, 1) if seconds else None}
        if acc:
            row.update(acc_mean=accs[acc][0], acc_sample=accs[acc][1])
        rows.append(row)
    data, markov = rows[0], rows[1]
    for vae_row in rows[2:]:
        metrics = ("oa_pch", "oa_nlh", "oa_pi", "oa_pr", "eb", "upc", "qn", "in_scale") + (("td",) if chorale else ())
        missed = [k for k in metrics if abs(vae_row[k] - data[k]) > abs(markov[k] - data[k])]
        vae_row["closer"] = f"{len(metrics) - len(missed)}/{len(metrics)}"
        vae_row["missed"] = missed
    return rows


def seed_counts(seeds: int, first: list[dict], *args, **kw) -> list[str]:
    """Per generated row of `evaluate`: in how many of `seeds` seeds it is closer to the data than the Markov
    chain on every metric (how much a table's "8/9" or "9/9" owes to the draw). `first`: the rows of seed 0,
    already evaluated with the same arguments."""
    tally: dict[str, list[list[str]]] = {}
    for rows in [first] + [evaluate(*args, **kw, seed=s) for s in range(1, seeds)]:
        for r in rows:
            if "missed" in r:
                tally.setdefault(r["model"], []).append(r["missed"])
    lines = []
    for label, runs in tally.items():
        counts = Counter(k for missed in runs for k in missed)
        lines.append(f"  {label}: closer on every metric in {sum(not m for m in runs)} of {len(runs)} seeds"
                     + (f" (missed: {', '.join(f'{k} {c}x' for k, c in counts.most_common())})" if counts else ""))
    return lines


def fmt(v, digits=3):
    if v is None:
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> str:
    cols = [("task", "task"), ("model", "model"), ("acc_mean", "recon acc (mean z)"), ("acc_sample", "recon acc (sampled z)"),
            ("oa_pch", "OA pitch classes"), ("oa_nlh", "OA note lengths"), ("oa_pi", "OA interval"),
            ("oa_pr", "OA range"), ("eb", "empty bars"), ("upc", "pitch classes/bar"), ("qn", "qualified notes"),
            ("in_scale", "in scale"), ("td", "tonal dist. S-B"), ("copy", "copies"), ("closer", "closer than Markov"),
            ("clips_per_s", "clips/s")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        cells = (f"{r[k]:,.0f}" if k == "clips_per_s" and r.get(k) else fmt(r.get(k), 4 if k == "eb" else 3)
                 for k, _ in cols)                          # empty bars: 4 digits, rates of a few in 10,000 count
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CARD = """# {name}

Convolutional {what} (`{kind}`, dims=1: time convolutions,
{units}; formats/music.py).

{role} For clips longer than {bars} bars `aeflow music sample` walks its latent space window by window.

Trained with the project's own code: {how}. Shipped as float16 safetensors ({size_kb:.0f} kB, {params:,}
parameters); loading casts back to float32.

- **Data**: {data}
- **Model**: widths {widths}, latent {latent}, beta {beta}.
- **Training**: {steps:,} steps of {batch} windows, AdamW (peak lr {lr:g}, warm-up then cosine), {seconds:.0f} s on
  {device}; weights kept at the best held-out ELBO ({elbo:.1f} nats per window, KL {kl:.1f} nats).
- **Held-out reconstruction accuracy** (argmax of decode(mu), per step): {acc:.3f}.

{rows}
"""
UNITS = {"melody": "the melody's 38 tokens as channels) over {bars}-bar melodies at 16 steps per bar (tokens: rest, "
                   "hold, onset of MIDI 48-83",
         "chorale": "4 voices x 48 tokens as channels) over {bars}-bar four-part chorales (soprano, alto, tenor, bass) "
                    "at 16 steps per bar (tokens per voice: rest, hold, onset of MIDI 36-81"}
DATA = {"essen": "music21's Essen folk-song collection (non-commercial permission: see music21's corpus licence),\n"
                 "  {tunes:,} tunes in 4/4, 2/2 or 2/4; {windows:,} bar-aligned {bars}-bar windows with no silent bar; "
                 "10 % of the tunes\n  held out by a hash of their name; training windows transposed into all 12 keys "
                 "where they fit the range\n  ({train:,} windows).",
        "bach": "the Bach chorales that ship with music21 (see music21's corpus licence), {tunes:,} of them in 4/4;\n"
                "  {windows:,} bar-aligned {bars}-bar windows; 10 % of the chorales held out by a hash of their name; "
                "training windows\n  transposed into all 12 keys where they fit the range ({train:,} windows)."}
BENCH_ROWS = {"essen": "Essen melody 2-bar", "bach": "Bach chorales 4-bar"}     # the task names in bench tables
KEY_CARD_ROLE = ("Conditioned on the key (tonic 0-11, major/minor; labels estimated per window with the "
                 "Krumhansl-Kessler profiles): what `aeflow music sample --key D` uses.")
DEFAULT_CARD_ROLE = "The default model of `aeflow music sample`."
CHORALE_CARD_ROLE = ("Four-part chorale phrases, conditioned on the key (tonic 0-11, major/minor; labels estimated "
                     "per window with the Krumhansl-Kessler profiles): `aeflow music sample --model "
                     "music-chorale-4bar-key OUT` (keys as often as the chorales use them; `--key D` asks for one).")


def key_adherence(folder: Path, n: int = 30) -> str:
    """For a key cvae asked for 12 keys, n 8-bar clips each at T=1 (as `music sample --key` draws them): the share
    of clips whose first draw comes out in the asked key (Krumhansl-Kessler estimate; `music sample` draws the
    others again), and of the delivered clips' note-steps in the asked key's scale vs in the scale a tritone away."""
    from flows.music import KEY_ROUNDS, generate_rolls, load_music_model, parse_key

    net, enc, window_bars, cols = load_music_model(folder)
    first, asked, wrong = [], [], []
    for i, key in enumerate(["C", "D", "E", "F", "G", "A", "Bb", "Am", "Dm", "Em", "Gm", "Cm"]):
        tonic, mode = parse_key(key)
        only = np.zeros((2, 12))
        only[mode, tonic] = 1                          # "the corpus's keys" = this key: the raw draws, as they come
        raw = generate_rolls(net, enc, window_bars, n, 8, seed=i, cond_cols=cols, key_counts=only)
        first += list((mm.estimate_keys(np.stack(raw), enc.lo) == (tonic, mode)).all(1))
        for r in generate_rolls(net, enc, window_bars, n, 8, seed=i, key=key, cond_cols=cols):
            c = mm.chroma(r, enc.lo)
            major = lambda t: c[np.roll(mm.MAJOR, (t + 3 * mode) % 12)].sum() / max(c.sum(), 1)  # noqa: E731
            asked.append(major(tonic))
            wrong.append(major(tonic + 6))
    return (f"{12 * n} clips of 8 bars at T=1, {n} per key for C D E F G A Bb Am Dm Em Gm Cm: {np.mean(first):.3f} "
            f"come out in the key asked for on the first draw (Krumhansl-Kessler estimate); `music sample --key` "
            f"draws the others again (up to {KEY_ROUNDS} times, then moves them to its tonic). Of the delivered "
            f"clips' note-steps {np.mean(asked):.3f} lie in the scale of the key asked for, {np.mean(wrong):.3f} "
            f"in the scale a tritone away.")


def ship(folder: Path, name: str = "music-melody-2bar") -> Path:
    """Copy a trained model folder into models/pretrained/<name>/ as float16 (< 2 MB) with a model card."""
    from flows.catalog import PRETRAINED
    from models.checkpoints import read_config, save_model

    cfg = read_config(folder)
    dest = PRETRAINED / name
    model = load_model(folder)
    keep = {k: cfg[k] for k in ("data", "metrics", "steps", "seconds", "parameters", "device", "train") if k in cfg}
    if "key_counts" not in keep["data"]:                  # trained before models recorded their corpus's keys
        ingest = outputs_root() / "ingest-music" / keep["data"]["ingest"]
        keep["data"] = {**keep["data"], "key_counts": window_split(str(ingest), keep["data"]["bars"])[3]["key_counts"]}
    save_model(model, dest, cfg["model"], dtype=torch.float16, extra={**keep, "source_folder": Path(folder).name})
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    bench = outputs_root() / "bench" / "music.md"
    lines = bench.read_text().splitlines() if bench.is_file() else []
    task = BENCH_ROWS[d["source"]]
    mine = [ln for ln in lines if ln.startswith("|") and task in ln]
    seeds = next((i for i, ln in enumerate(lines) if ln.startswith(f"- {task}") and ln.endswith(":")), None)
    counts = [] if seeds is None else [ln[1:].strip() for ln in
                                       itertools.takewhile(lambda ln: "closer on every metric" in ln, lines[seeds + 1:])]
    table_rows = ("## bench/music.py rows (these weights' float32 originals; 400 prior samples vs held-out windows)\n\n"
                  + "\n".join(lines[:2] + mine)
                  + "".join(f"\n\n- {c}" if i == 0 else f"\n- {c}" for i, c in enumerate(counts))) if mine else ""
    if m["kind"] == "cvae":
        rows = "## Key adherence (these float16 weights)\n\n" + key_adherence(dest) + "\n\n" + table_rows
        what, role = "conditional VAE", CHORALE_CARD_ROLE if d["mode"] == "chorale" else KEY_CARD_ROLE
        how = (f"`aeflow music train --corpus {d['source']}{' --mode chorale' if d['mode'] == 'chorale' else ''} "
               f"--condition key --bars {d['bars']} --steps {cfg['steps']} --batch-size {t['batch_size']} --epoch-steps "
               f"{t['epoch_steps']} --latent {m['latent']} --beta {m['beta']:g}`")
    else:
        rows = table_rows or "(run the bench)"
        what, role = "VAE", DEFAULT_CARD_ROLE
        how = "`python bench/music.py --train-only`: flows.music.train_music -> flows.train.train_windows"
    fields = dict(bars=d["bars"], tunes=d["pieces_in_meters"], windows=d["windows"], train=d["train_windows"])
    (dest / "MODEL_CARD.md").write_text(CARD.format(
        name=name, what=what, kind=m["kind"], role=role, how=how, rows=rows, bars=d["bars"],
        units=UNITS[d["mode"]].format(**fields), data=DATA[d["source"]].format(**fields),
        size_kb=(dest / "model.safetensors").stat().st_size / 1024, params=cfg["parameters"], widths=m["widths"],
        latent=m["latent"], beta=m["beta"], steps=cfg["steps"], batch=t["batch_size"], lr=t["lr"],
        seconds=cfg["seconds"], device=cfg["device"], elbo=cfg["metrics"]["val_elbo"], kl=cfg["metrics"]["val_kl"],
        acc=cfg["metrics"]["val_acc"]))
    for f in dest.iterdir():
        assert f.stat().st_size < 2 << 20, f"{f} is over 2 MB"
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="melody2,melody8,jsb4,bach4")
    ap.add_argument("--n", type=int, default=400, help="generated windows per model")
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--ar", type=int, default=6, help="JSB: also a key cvae whose decoder sees this many steps "
                    "before each step (models.vaes.VAE.draw; 0 = none)")
    ap.add_argument("--device", default="auto", help="training device (the stage key holds it: keep auto to reuse)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--steps", type=int, help="override the training steps of every task (smoke tests)")
    ap.add_argument("--ingest", help="an ingest-music folder of Essen melodies (default: ingest music21's corpus)")
    ap.add_argument("--jsb", type=Path, default=JSB)
    ap.add_argument("--seeds", type=int, default=0, help="also count, over this many seeds, how often each row is "
                    "closer than the Markov chain on every metric (one evaluation per seed)")
    ap.add_argument("--jsb-rows", choices=("test", "valid"), default="test",
                    help="JSB split the rows are measured on (valid: a check that does not touch the test split; "
                         "written to music-valid.md)")
    ap.add_argument("--ship", type=Path, help="copy this trained 2-bar melody model into models/pretrained/ and stop")
    ap.add_argument("--name", default="music-melody-2bar", help="shipped name (with --ship)")
    args = ap.parse_args()
    if args.ship:
        print(ship(args.ship, args.name))
        return
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model_cfg = {"widths": [64, 128, 256], "latent": args.latent, "beta": args.beta}
    rows, notes, t_start = [], [], time.perf_counter()
    load0 = os.getloadavg()[0]
    tasks = args.tasks.split(",")
    if any(t.startswith("melody") for t in tasks):
        ingest = open_stage(args.ingest or ingest_music("essen", "melody"))
        manifest = ingest.manifest
        notes.append(f"Essen: {manifest['counts']['pieces']:,} tunes in 4/4, 2/2 or 2/4 parsed ({manifest['counts']['failed']} "
                     f"failed) in {manifest['seconds']:.0f} s; meters as parsed {manifest['meters']}")
    for task in tasks:
        t0, trained = time.perf_counter(), []            # the models this task trained (or found cached)
        training = {"steps": args.steps or STEPS[task], "epoch_steps": 500, "batch_size": 128, "device": args.device}
        if task.startswith("melody"):
            bars = int(task[len("melody"):])
            trained.append(train_music(ingest, bars, model_cfg, training, progress=False))
            folder = trained[0].folder
            if not args.train_only:
                (xt, _), (xv, _), enc, info = window_split(ingest, bars, max_val=10 ** 9)
                name = f"Essen melody {bars}-bar"
                walk = train_music(ingest, 2, model_cfg, {**training, "steps": args.steps or STEPS["melody2"]},
                                   progress=False).folder if bars > 2 else None
                got = evaluate(name, folder, xt, xv, args.n, enc, info["key_counts"], walk)
                rows += got
                if args.seeds:
                    notes += [f"{name}:"] + seed_counts(args.seeds, got, name, folder, xt, xv, args.n, enc,
                                                        info["key_counts"], walk)
                notes.append(f"{name}: {info['windows']:,} windows ({info['unique_windows']:,} distinct) from "
                             f"{info['pieces_in_meters']:,} tunes; {info['train_windows']:,} training windows after "
                             f"transposition; held-out rows: {info['val_windows']:,} windows of 10 % of the tunes")
        elif task == "bach4":
            bach = ingest_music("bach", "chorale")
            (xt, lt), (xv, _), enc, info = window_split(bach, 4, max_val=10 ** 9)
            plain = window_split(bach, 4, augment_train=False, max_val=10 ** 9)[0][0]
            trained.append(train_music(bach, 4, BACH_MODEL, training, condition="key", progress=False))
            cvaes = {"key cvae": trained[0].folder}
            folder = None
            if not args.train_only:
                name = "Bach chorales 4-bar (music21)"
                got = evaluate(name, None, xt, xv, args.n, enc, info["key_counts"], keyed=cvaes, ideal=plain)
                rows += got
                if args.seeds:
                    notes += [f"{name}:"] + seed_counts(args.seeds, got, name, None, xt, xv, args.n, enc,
                                                        info["key_counts"], keyed=cvaes, ideal=plain)
                notes.append(f"{name}: {info['windows']:,} windows from {info['pieces_in_meters']:,} chorales in "
                             f"4/4; {info['train_windows']:,} training windows after transposition; held-out rows: "
                             f"{info['val_windows']:,} windows of 10 % of the chorales (by a hash of their name); "
                             f"model {BACH_MODEL}")
        elif task == "jsb4":
            if not args.jsb.is_file():
                notes.append(f"JSB chorales skipped: {args.jsb} is missing")
                continue
            xt, xv, xs = (jsb_windows(args.jsb, split) for split in ("train", "valid", "test"))
            keys = lambda x: np.concatenate([np.zeros((len(x), 1), np.int64), mm.estimate_keys(x, CHORALE.lo)], 1)  # noqa: E731
            lt = keys(xt)
            xt_aug, lt_aug = augment(xt, lt, CHORALE)
            model = {**model_cfg, "kind": "vae", "dims": 1, "vocab": CHORALE.vocab, "shape": [4, 64]}
            data = {"mode": "chorale", "bars": 4, "steps_per_bar": BAR, "source": "jsb", "split": "train"}
            trained.append(train_windows("music-chorale-4bar-jsb", (), data, (xt_aug, None), (xv, None), model,
                                         training, progress=False, job="music"))
            trained.append(train_windows(
                "music-chorale-4bar-jsb", (), {**data, "condition": "key"}, (xt_aug, lt_aug[:, 1:3]),
                (xv, keys(xv)[:, 1:3]), {**model, "kind": "cvae", "cond": [12, 2]}, training, progress=False,
                job="music"))
            folder, cvaes = trained[0].folder, {"key cvae": trained[1].folder}
            if args.ar:
                trained.append(train_windows(
                    "music-chorale-4bar-jsb", (), {**data, "condition": "key"}, (xt_aug, lt_aug[:, 1:3]),
                    (xv, keys(xv)[:, 1:3]), {**model, "kind": "cvae", "cond": [12, 2], "ar": args.ar},
                    {**training, "steps": args.steps or STEPS["jsb4 ar"]}, progress=False, job="music"))
                cvaes[f"key cvae, ar {args.ar}"] = trained[-1].folder
            if not args.train_only:
                name = "JSB chorales 4-bar"
                held = xs if args.jsb_rows == "test" else xv
                got = evaluate(name, folder, xt_aug, held, args.n, CHORALE, key_counts(lt), keyed=cvaes, ideal=xt)
                rows += got
                if args.seeds:
                    notes += [f"{name}, {args.jsb_rows} split:"] + seed_counts(
                        args.seeds, got, name, folder, xt_aug, held, args.n, CHORALE, key_counts(lt), keyed=cvaes,
                        ideal=xt)
                notes.append(f"{name}: {len(xt):,} training windows ({len(xt_aug):,} after transposition), "
                             f"{len(xv):,} validation windows (model selection), {len(xs):,} test windows; "
                             f"held-out rows: the {args.jsb_rows} split")
                qn = {s: mm.set_stats(list(x), CHORALE.lo)["qualified"] for s, x in (("train", xt), ("valid", xv),
                                                                                   ("test", xs))}
                notes.append("  qualified-note rate of each whole split (how far the splits differ): "
                             + ", ".join(f"{s} {v:.3f}" for s, v in qn.items()))
        for result in trained:
            cfg = result.manifest
            notes.append(f"  model {result.folder.name}: {cfg['parameters']:,} parameters, {cfg['steps']} steps of 128 in "
                         f"{cfg['seconds']:.0f} s on {cfg['device']} (cached when trained earlier), held-out accuracy "
                         f"{cfg['metrics']['val_acc']:.3f}, KL {cfg['metrics']['val_kl']:.1f} nats; this task "
                         f"{time.perf_counter() - t0:.0f} s")
    if args.train_only:
        print("\n".join(notes))
        return
    md = table(rows)
    text = (md + "\n\n" + "\n".join(f"- {n}" for n in notes)
            + f"\n- model {model_cfg} (bach4: its own, above); clips/s on the CPU ({torch.get_num_threads()} "
              f"threads), one batch of {args.n}; "
              f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; bench wall {time.perf_counter() - t_start:.0f} s\n")
    print(text)
    out = outputs_root() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    stem = "music" if args.jsb_rows == "test" else "music-valid"
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
