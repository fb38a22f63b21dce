"""Anomalies in time series: a 1-D convolutional autoencoder per series, trained on the series itself.

    train   CSV -> series on its median step (formats/series.py) -> windows of the training part (the first
            `train_fraction`: NAB's probationary 15 % by default) -> the train stage (cached by content, job
            "anomaly"), twice: the second pass without the `drop` share of windows the first reconstructs worst
            (anomalies in the training part are not learnt as normal) -> a detector stage under
            outputs/anomaly/ (detector.json: the model, the scaling, the threshold from the training scores)
    score   CSV + detector -> score per point (squared reconstruction error, mean over the windows that cover
            it) -> flags (score >= threshold) -> events (flags at most `gap` points apart merged) ->
            OUT/<series>/scores.csv, events.json, <series>.png and OUT/report.json
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from flows.settings import outputs_root
from flows.stages import Stage, read_manifest, run_stage
from formats.series import (BadSeries, Series, events, label_segments, moving_mean, parse_time, per_point, plot_series,
                            read_series, regularise, window_starts, windows)
from models.checkpoints import write_bytes_atomic, write_json_atomic

VERSION = 1
# the family's conv body, 1-D on (1, window) windows (models/blocks.py): a conv at full length, then two stride-2
# convs; bottleneck (32, window / 4). On NAB it beat widths 8,8,16,32 (bottleneck window / 8) on every family
# (event F1 0.339 / 0.312 / 0.621 / 0.585 vs 0.333 / 0.235 / 0.593 / 0.465 at 800 steps): bench/README.md
MODEL = {"kind": "ae", "body": "conv", "head": "gaussian", "widths": [8, 16, 32], "latent": 16}
# 1600 steps: VUS-PR rises with the steps (windows every 8 steps; realTraffic 0.374 / 0.431 / 0.508 / 0.519 and
# realAdExchange 0.327 / 0.333 / 0.339 / 0.339 at 200 / 400 / 1600 / 3200); two passes take ~22 s on one core
TRAINING = {"steps": 1600, "epoch_steps": 300, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100, "select": "neg_loss"}
# windows every window // HOP steps, so HOP windows cover each point: one core scores 905,000 / 362,000 / 186,000
# points/s at HOP 4 / 8 / 16; realTraffic's VUS-PR at 1600 steps 0.489 (8) and 0.508 (16)
HOP = 8
# threshold = MARGIN x the QUANTILE of the training part's point scores, smoothed over window // SMOOTH steps;
# the rule bench/anomaly.py picks from its grid (RULES) by event F1 on NAB's families with anomalies and no
# false event on artificialNoAnomaly; its table also gives each family's F1 under the rule the others pick
QUANTILE, MARGIN, SMOOTH = 0.99, 3.0, 4
GAP = 12                         # flagged points at most this many points apart are one event (the NAB note's)
# a series with more of its points flagged has changed, or its training part was too short (the model learns
# it by heart and its scores set too low a threshold): said, with the cure. On NAB the AE flags 0-15 % of a
# series, and 46-91 % of four whose training parts hold 170-250 points
DRIFT_SHARE = 0.25


def threshold_of(train_score: np.ndarray, quantile: float = QUANTILE, margin: float = MARGIN) -> float:
    """The flag threshold from the training part's scores alone (never labels)."""
    return margin * float(np.quantile(train_score, quantile))


def find_series(target: str | Path, empty: bool = False) -> list[Path]:
    """A CSV file, or every *.csv under a folder (sorted; a folder without any is an error unless `empty`)."""
    target = Path(target).expanduser()
    if target.is_dir():
        found = sorted(p for p in target.rglob("*.csv") if p.is_file())
        if not found and not empty:
            raise FileNotFoundError(f"{target}: no .csv files in this folder")
        return found
    if not target.is_file():
        raise FileNotFoundError(f"{target}: no such file or folder")
    return [target]


def scaling(x: np.ndarray) -> tuple[float, float]:
    """Robust centre and scale of the training part: median and IQR / 1.349 (a Gaussian's std), floored so that
    a flat line does not divide by zero."""
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    scale = (q3 - q1) / 1.349 or x.std()
    return float(med), float(max(scale, 1e-6 * max(abs(med), 1.0)))


def _train_pass(name: str, x: np.ndarray, about: dict, window: int, steps: int, seed: int, refresh: bool,
                progress: bool, model_name: str | None):
    """One train stage on windows x (N, 1, window): every tenth window held out for validation (a StageResult)."""
    from flows.train import train_windows

    val = np.arange(len(x)) % 10 == 9
    train = ~val if val.any() else np.ones(len(x), bool)              # under ten windows: validate on them all
    training = {**TRAINING, "steps": steps, "seed": seed, "epoch_steps": min(TRAINING["epoch_steps"], steps)}
    return train_windows(name, (), about, (x[train], None), (x[val if val.any() else train], None), MODEL, training,
                         refresh=refresh, progress=progress, name=model_name, dense=True, job="anomaly")


def reconstruct_errors(net, z: np.ndarray, window: int, hop: int, smooth: int = 1, batch: int = 4096) -> np.ndarray:
    """Scaled grid values z (M,) -> squared reconstruction error per grid step (M,), the mean over the windows
    (every `hop` steps) that cover it, then over `smooth` neighbouring steps (one noisy step is no event)."""
    import torch

    starts = window_starts(len(z), window, hop)
    if not len(starts):
        raise ValueError(f"{len(z)} points: fewer than one window of the detector's {window}; score it with a "
                         f"detector trained with a smaller --window")
    x = windows(z.astype(np.float32), starts, window)                  # (n, window)
    err = np.empty_like(x)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch, None])                 # (b, 1, window)
            mu, _ = net.encode(xb)
            err[i:i + batch] = (net.draw(net.decode(mu)) - xb).pow(2)[:, 0].numpy()
    return moving_mean(per_point(err, starts, len(z)), smooth)


def train_series(path: str | Path, column: str = "value", window: int = 128, train_fraction: float = 0.15,
                 drop: float = 0.05, steps: int = TRAINING["steps"], max_fill: int = 12, long_gaps: str = "join",
                 seed: int = 0, refresh: bool = False, progress: bool = True, name: str | None = None) -> dict:
    """Train (or find cached) the detector of one series; returns its detector.json (with `folder`)."""
    from models.registry import load_model

    series = read_series(path, column)
    grid = regularise(series, max_fill, long_gaps)
    n_train = int(round(len(grid.values) * train_fraction))
    if n_train < window + 8:
        raise ValueError(f"{path}: its training part ({train_fraction:.0%} of {len(grid.values)} points = {n_train}) "
                         f"is shorter than a window of {window} + 8; use a smaller --window or a larger "
                         f"--train-fraction")
    center, scale = scaling(grid.values[:n_train])
    z = (grid.values - center) / scale
    x = windows(z[:n_train].astype(np.float32), np.arange(n_train - window + 1), window)[:, None]   # (N, 1, window)
    about = {"job": "anomaly", "series": series.name, "column": column, "train_points": n_train,
             "center": center, "scale": scale, "step_s": grid.step_s}
    tag = f"conv-{series.name}"
    trained = _train_pass(tag + "-pass1" if drop > 0 else tag, x, {**about, "pass": 1}, window, steps, seed, refresh,
                          progress, None)
    passes = [trained.folder]
    if drop > 0:             # the second pass leaves out the windows the first reconstructs worst
        net = load_model(trained.folder)
        per_window = windows(reconstruct_errors(net, z[:n_train], window, 1), np.arange(len(x)), window).mean(1)
        keep = per_window <= np.quantile(per_window, 1 - drop)
        trained = _train_pass(tag, x[keep], {**about, "pass": 2, "dropped_windows": int((~keep).sum())}, window,
                              steps, seed, refresh, progress, name)
        passes.append(trained.folder)
    folder, model_key = trained.folder, trained.manifest["key"]
    config = {"window": window, "hop": max(1, window // HOP), "smooth": max(1, window // SMOOTH), "quantile": QUANTILE,
              "margin": MARGIN}
    stage = Stage("anomaly", VERSION, name or series.name, config, upstream=(model_key,))

    def fill(tmp: Path) -> dict:
        net = load_model(Path(folder))
        train_score = reconstruct_errors(net, z[:n_train], window, config["hop"], config["smooth"])
        threshold = threshold_of(train_score)
        detector = {"model": str(folder), "model_key": model_key, "series": series.name, "source": str(path),
                    "column": column, "center": center, "scale": scale, "step_s": grid.step_s, **config,
                    "threshold": threshold, "train_points": n_train, "train_fraction": train_fraction,
                    "train_score": {q: float(np.quantile(train_score, float(q))) for q in ("0.5", "0.99", "1.0")},
                    "bad_rows": len(series.bad), "regularised": grid.report, "seconds": _train_seconds(passes)}
        write_json_atomic(tmp / "detector.json", detector)
        return {"series": series.name, "threshold": threshold}

    out = run_stage(stage, fill, refresh).folder
    detector = json.loads((out / "detector.json").read_text())
    return {**detector, "folder": str(out), "bad": [b.__dict__ for b in series.bad], "cached": trained.cached}


def _train_seconds(folders: list[str]) -> float:
    """Training seconds of the passes together."""
    return round(sum(json.loads((Path(f) / "config.json").read_text()).get("seconds", 0.0) for f in folders), 2)


def detectors(root: str = "anomaly") -> list[Path]:
    """Detector folders: series ("anomaly") or traffic ("anomaly-traffic")."""
    return sorted(p.parent for p in (outputs_root() / root).glob("*/manifest.json"))


def resolve_detector(name: str | None, root: str = "anomaly", fits=None) -> Path | None:
    """--model: a detector folder, its name or a unique prefix of it; None: the newest detector of `root` whose
    detector.json `fits` (the caller says why when none does: None)."""
    train = "aeflow anomaly series train CSV" if root == "anomaly" else "aeflow anomaly traffic train FILE"
    if name and Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "detector.json").is_file():
            raise FileNotFoundError(f"{name}: not an anomaly detector folder (no detector.json)")
        return folder
    known = detectors(root)
    if name:
        matches = [f for f in known if f.name.rsplit("-", 1)[0] == name] or [f for f in known if f.name.startswith(name)]
        if len(matches) != 1:
            raise FileNotFoundError(f"--model {name}: {'ambiguous' if matches else 'matches no detector'}; known: "
                                    f"{', '.join(f.name for f in known) or f'none ({train})'}")
        return matches[0]
    own = [f for f in known if fits is None or fits(json.loads((f / "detector.json").read_text()))]
    return max(own, key=lambda f: (read_manifest(f) or {}).get("created", "")) if own else None


def labels_for(labels: dict, path: Path, root: Path) -> list | None:
    """The labelled windows of a file from a NAB-style label file ({"family/file.csv": [[start, end], ...]}):
    by its path under the input folder, else by its file name when that is unique."""
    rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
    if rel in labels:
        return labels[rel]
    same = [k for k in labels if Path(k).name == path.name]
    return labels[same[0]] if len(same) == 1 else None


def score_points(series: Series, detector: dict, net=None, max_fill: int = 12, since: int = 0) -> tuple[np.ndarray, float]:
    """Score per point of the series from point `since` on (squared reconstruction error, scaled units) and seconds
    spent. The grid is always the whole series'; from `since` > 0 only the windows that reach those points or their
    smoothing neighbours run, starting on the whole run's hop grid, so the scores equal a full scoring's."""
    from models.registry import load_model

    net = net or load_model(Path(detector["model"]))
    grid = regularise(series, max_fill)
    t0 = time.perf_counter()
    z = (grid.values - detector["center"]) / detector["scale"]
    window, hop, smooth = detector["window"], detector["hop"], detector["smooth"]
    # the windows covering the first new point's leftmost smoothing neighbour start at or after lo
    lo = max(0, int(grid.index[since]) - smooth // 2 - window + 1) // hop * hop
    score = reconstruct_errors(net, z[lo:], window, hop, smooth)[grid.index[since:] - lo]
    return score, time.perf_counter() - t0


def _with_detector(path: Path, model: str | None, column: str | None) -> tuple[Series, Path, dict]:
    """A series file, its detector (`model`'s, else the one trained on a series of its name) and, unless
    `column` names one, the values of the column that detector was trained on."""
    series = read_series(path, column or "value")
    folder = resolve_detector(model, fits=lambda d: d["series"] == series.name)
    if folder is None:
        raise FileNotFoundError(f"{series.name}: no detector trained on a series of this name; train one first "
                                f"(aeflow anomaly series train CSV) or name one with --model")
    detector = json.loads((folder / "detector.json").read_text())
    if column is None and detector["column"] != "value":
        series = read_series(path, detector["column"])
    return series, folder, detector


def drift_warning(flags: np.ndarray, detector: dict) -> dict:
    """{"warning": ...} when over DRIFT_SHARE of at least a window of points is flagged, else {}."""
    share = float(flags.mean()) if len(flags) else 0.0
    if len(flags) < detector["window"] or share <= DRIFT_SHARE:
        return {}
    return {"warning": f"{share:.0%} of the points scored are flagged: the series has changed since the "
                       f"{detector['train_points']} points its detector learnt from, or those were too few to "
                       f"learn it; train again on a larger --train-fraction or on recent data"}


def _score_rows(stamps: list[str], values: np.ndarray, score: np.ndarray, flags: np.ndarray) -> str:
    """scores.csv's data rows (timestamp, value, score, flag)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        zip(stamps, (f"{v:.10g}" for v in values), (f"{s:.6g}" for s in score), flags.astype(int)))
    return buf.getvalue()


SCORES_HEADER = "timestamp,value,score,flag\n"


def _write_series(dest: Path, series: Series, score: np.ndarray, flags: np.ndarray, threshold: float, gap: int,
                  labelled: list | None = None, rows: str | None = None) -> list[dict]:
    """OUT/<series>/: scores.csv (`rows`, else made from the arguments), events.json and the plot of the series'
    points and their scores (one each, in order); returns the events."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else SCORES_HEADER + _score_rows(series.stamps, series.values, score, flags)
    write_bytes_atomic(dest / "scores.csv", rows.encode())
    found = events(flags, gap)
    ev = [{"start": series.stamps[a], "end": series.stamps[b], "peak": float(score[a:b + 1].max()),
           "points": b - a + 1, "start_line": int(series.lines[a]), "end_line": int(series.lines[b])}
          for a, b in found]
    write_json_atomic(dest / "events.json", ev)
    write_bytes_atomic(dest / f"{series.name}.png", plot_series(series.name, series.values, score, threshold, found,
                                                                labelled))
    return ev


def _reason(path: Path, e: Exception) -> str:
    """A failed file's one line, naming it (once)."""
    return str(e) if str(e).startswith(str(path)) else f"{path}: {e}"


def read_labels(path: str | Path) -> dict:
    """A NAB-style label file: {"family/file.csv": [[start, end], ...]}; anything else is one line naming it."""
    path = Path(path).expanduser()
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    expected = 'a JSON object {"family/file.csv": [["start", "end"], ...]} (NAB\'s combined_windows.json)'
    if not isinstance(labels, dict):
        raise ValueError(f"{path}: not {expected}")
    for name, wins in labels.items():
        if not isinstance(wins, list):
            raise ValueError(f"{path}: {name}: not a list of windows; expected {expected}")
        for w in wins:
            if isinstance(w, str):
                raise ValueError(f"{path}: {name} lists single timestamps, not [start, end] windows (NAB's "
                                 f"combined_labels.json?); give {expected}")
            if not (isinstance(w, list) and len(w) == 2 and all(isinstance(t, str) and parse_time(t[:19])
                                                                  is not None for t in w)):
                raise ValueError(f"{path}: {name}: {json.dumps(w)[:60]} is not a [start, end] pair of timestamps")
    return labels


def score_series(target: str | Path, out_dir: str | Path, model: str | None = None, column: str | None = None,
                 labels: str | None = None, gap: int = GAP, max_fill: int = 12) -> dict:
    """Score every series of `target` with its detector (or `model`'s) into OUT_DIR; returns report.json."""
    root = Path(target).expanduser()
    out = Path(out_dir).expanduser()
    label_map = read_labels(labels) if labels else None
    rows, failed = [], []
    for path in find_series(root):
        try:
            series, folder, detector = _with_detector(path, model, column)
            score, seconds = score_points(series, detector, max_fill=max_fill)
        except (BadSeries, FileNotFoundError, ValueError) as e:
            failed.append({"file": str(path), "reason": _reason(path, e)})
            continue
        flags = score >= detector["threshold"]
        windows_ = labels_for(label_map, path, root) if label_map is not None else None
        labelled = label_segments(series.seconds, windows_) if windows_ is not None else None
        dest = out / series.name
        ev = _write_series(dest, series, score, flags, detector["threshold"], gap, labelled)
        rows.append({"file": str(path), "series": series.name, "detector": folder.name, "points": len(score),
                     "events": len(ev), "flagged": int(flags.sum()), "threshold": detector["threshold"],
                     "points_per_s": round(len(score) / max(seconds, 1e-9)), "bad_rows": [b.__dict__ for b in series.bad],
                     "out": str(dest), **({"labelled_windows": len(labelled)} if labelled is not None else {}),
                     **drift_warning(flags, detector)})
    report = {"target": str(root), "out_dir": str(out), "series": rows, "failed": failed, "gap": gap}
    out.mkdir(parents=True, exist_ok=True)                   # also when no series made it
    write_json_atomic(out / "report.json", report)
    return report


# ---------------------------------------------------------------- scheduled, incremental scoring
#
#     Each run scores, per CSV of the watched folder, the points newer than the last scored timestamp, which
#     OUT/<series>/state.json records (written last: an interrupted run is found out and scored again from the
#     start). The series is read and put on its grid whole, so the new points' scores equal a full scoring's;
#     scores.csv gets their rows (the file rewritten and replaced), events.json and the plot are redone over
#     all rows. The caller holds OUT's lock (flows.denoise.job_lock, as a denoise run does).

STATE = "state.json"


def _complete_lines(path: Path, series: Series) -> tuple[Series, bool]:
    """The series without its last line when that line has no newline yet (a writer is appending it: a value
    cut short would be scored once and never again); and whether it had one."""
    data = path.read_bytes()
    if not data or data.endswith((b"\n", b"\r")):
        return series, False
    last_line = data.count(b"\n") + 1
    keep = series.lines != last_line
    return Series(series.name, [s for s, k in zip(series.stamps, keep) if k], series.seconds[keep],
                  series.values[keep], series.lines[keep], [b for b in series.bad if b.line != last_line]), True


def _scored_before(dest: Path, series: Series, detector: str) -> tuple[int, np.ndarray, str, dict]:
    """How many of the series' points earlier runs scored, their scores, scores.csv's text and the state. When the
    outputs do not match the state, the file or the detector (an interrupted run, an edited file, deleted
    outputs, a retrained detector), everything is scored again: (0, ...) with the reason as the state's
    "rescored"."""
    try:
        state = json.loads((dest / STATE).read_text())
    except (OSError, ValueError):
        return 0, np.zeros(0), "", {}                                        # the first run
    try:
        text = (dest / "scores.csv").read_text()
        rows = list(csv.reader(io.StringIO(text)))[1:]
        done = int(np.searchsorted(series.seconds, state["last_seconds"], "right"))
        if state["detector"] != detector:
            why = f"the detector is now {detector}, not {state['detector']}"
        elif len(rows) == done == state["points"] and (not rows or rows[-1][0] == state["last"]):
            return done, np.array([float(r[2]) for r in rows]), text, state
        else:
            why = f"{dest / 'scores.csv'} does not match {dest / STATE} or the series file"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        why = f"{dest}: {e}"
    return 0, np.zeros(0), "", {"rescored": f"{why}: scored again from the start"}


def score_new_points(path: Path, out: Path, model: str | None = None, column: str | None = None, gap: int = GAP,
                     max_fill: int = 12) -> dict:
    """Score the points of one series file that earlier runs did not into OUT/<series>/; returns its report row
    (`new_points` 0: nothing arrived, nothing written)."""
    series, folder, detector = _with_detector(path, model, column)
    series, pending = _complete_lines(path, series)
    dest = out / series.name
    done, old, text, state = _scored_before(dest, series, folder.name)
    bad = [b.__dict__ for b in series.bad if b.line > state.get("lines", 0)]       # new since the last run
    row = {"file": str(path), "series": series.name, "detector": folder.name, "points": len(series.values),
           "new_points": len(series.values) - done, "bad_rows": bad, "pending": pending, "out": str(dest),
           **({"rescored": state["rescored"]} if "rescored" in state else {})}
    if done == len(series.values):
        if bad and "rescored" not in state:          # said once: the next run starts after them
            write_json_atomic(dest / STATE, {**state, "lines": max(b["line"] for b in bad)})
        return row
    score, seconds = score_points(series, detector, max_fill=max_fill, since=done)
    flags = score >= detector["threshold"]
    rows = (text or SCORES_HEADER) + _score_rows(series.stamps[done:], series.values[done:], score, flags)
    all_score = np.r_[old, score]
    ev = _write_series(dest, series, all_score, all_score >= detector["threshold"], detector["threshold"], gap,
                       rows=rows)
    lines = max([int(series.lines[-1])] + [b.line for b in series.bad])
    write_json_atomic(dest / STATE, {"last": series.stamps[-1], "last_seconds": float(series.seconds[-1]),
                                     "points": len(series.values), "lines": lines, "detector": folder.name})
    return {**row, "from": series.stamps[done], "to": series.stamps[-1], "flagged": int(flags.sum()),
            "events": len(ev), "threshold": detector["threshold"],
            "points_per_s": round(len(score) / max(seconds, 1e-9)), **drift_warning(flags, detector)}


def score_new(in_dir: str | Path, out_dir: str | Path, model: str | None = None, column: str | None = None,
              gap: int = GAP, run: str = "") -> dict:
    """A scheduled run: `score_new_points` for every CSV of IN_DIR; the run's report, also written to
    OUT_DIR/.aeflow/report.json (where `aeflow schedule run --wait` and `schedule list` read a run's outcome)."""
    from models.checkpoints import check_folders

    t0 = time.perf_counter()
    root, out = Path(in_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; give the folder that holds the CSV files")
    check_folders(root, out)
    scored, skipped, failed = [], [], []
    for path in find_series(root, empty=True):
        try:
            row = score_new_points(path, out, model, column, gap)
        except (BadSeries, FileNotFoundError, ValueError) as e:
            failed.append({"file": str(path), "reason": _reason(path, e)})
            continue
        (scored if row["new_points"] else skipped).append(row)
    rows = scored + skipped
    report = {"job": "anomaly-series", "run": run, "in_dir": str(root), "out_dir": str(out), "model": model,
              "series": scored, "skipped": skipped, "failed": failed,
              "counts": {"scored": len(scored), "points": sum(r["new_points"] for r in scored),
                         "skipped": len(skipped), "failed": len(failed),
                         "pending": sum(r["pending"] for r in rows),
                         "bad_rows": sum(len(r["bad_rows"]) for r in rows)},
              "seconds": round(time.perf_counter() - t0, 3)}
    (out / ".aeflow").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / ".aeflow" / "report.json", report)
    return report


def train_all(target: str | Path, **kwargs) -> dict:
    """train_series for every CSV of `target`; a file that cannot be used is listed with its reason."""
    trained, failed = [], []
    for path in find_series(target):
        try:
            trained.append(train_series(path, **kwargs))
        except (BadSeries, ValueError) as e:
            failed.append({"file": str(path), "reason": str(e)})
    if not trained and failed:
        raise ValueError(failed[0]["reason"] if len(failed) == 1 else f"{target}: no usable series "
                         f"({len(failed)} failed; the first: {failed[0]['reason']})")
    return {"detectors": trained, "failed": failed}


# ---------------------------------------------------------------- anomalies in network traffic (records)
#
#     train   FILE -> its normal records (label column == --normal-label), split fit / held out by seed ->
#             formats/tabular.py features fitted on the fit rows only -> a VAE on them (the train stage) ->
#             a detector stage under outputs/anomaly-traffic/ (detector.json: the model, the encoding, the
#             thresholds: the 95th percentile of each score on the held-out normal rows)
#     score   FILE + detector (--model, or the newest trained on columns FILE has) -> OUT/scores.csv, one row
#             per input record in order: score = the encoder only, the mean distance of the code mu(x) to its 5
#             nearest codes of the normal fit records (a distance in latent space to the normal codes); kl = KL of q(z|x) to the prior (encoder only too; weaker on
#             NSL-KDD: bench/anomaly.py); recon_score = An & Cho's reconstruction probability as an NLL

# Gaussian head: scored features fall outside [0, 1] (that is what an anomaly looks like), where a Bernoulli NLL
# has no lower bound; beta < 1 stands for a variance under 1 (features in [0, 1]). 0.005: every unit active on
# NSL-KDD (beta 0.05 kept 2 of 8, 0.5 none; the KL score's AUROC 0.95 at 0.005, 0.80 at 0.05)
TRAFFIC_MODEL = {"kind": "vae", "body": "mlp", "head": "gaussian", "widths": [128, 64], "latent": 8, "beta": 0.005}
TRAFFIC_TRAINING = {"steps": 3000, "epoch_steps": 500, "batch_size": 128, "lr": 1e-3, "warmup_steps": 100}
TRAFFIC_IGNORE = ("difficulty",)     # NSL-KDD: how many classifiers missed the record, not a property of traffic
TRAFFIC_QUANTILE = 0.95              # thresholds: this quantile of the held-out normal rows' scores (the note's p95)
NEIGHBOURS = 5                       # the score: mean distance to this many nearest normal codes
RECON_SAMPLES = 8                    # draws of z per record for the reconstruction probability
CODES = "codes.safetensors"          # in a traffic detector's folder: the codes of the normal fit records


def _latent_distance(mu, codes, k: int = NEIGHBOURS):
    """(b, latent) codes -> (b,) mean distance to the k nearest of `codes` (N, latent), and their indices."""
    import torch

    d = torch.cdist(mu, codes)                                              # (b, N)
    near, idx = d.topk(min(k, len(codes)), dim=1, largest=False)
    return near.mean(1), idx


def traffic_scores(net, x: np.ndarray, codes: np.ndarray, batch: int = 2048, seed: int = 0) -> dict[str, np.ndarray]:
    """Features (N, D) -> (N,) each: "score" (mean distance of mu(x) to its nearest normal `codes`), "kl" (KL of
    q(z|x) to N(0, I)), both the encoder only, and "recon_score" (-log mean_l p(x|z_l), z_l ~ q(z|x): An & Cho
    2015's reconstruction probability). Higher = more anomalous."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    normal = torch.from_numpy(np.ascontiguousarray(codes, np.float32))
    out = {k: np.empty(len(x)) for k in ("score", "kl", "recon_score")}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch], np.float32))
            mu, logvar = net.encode(xb)
            out["score"][i:i + batch] = _latent_distance(mu, normal)[0].numpy()
            out["kl"][i:i + batch] = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).numpy()
            nll = torch.stack([net.head.nll(net.decode(mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen)), xb)
                               for _ in range(RECON_SAMPLES)])                        # (L, b)
            out["recon_score"][i:i + batch] = (-(torch.logsumexp(-nll, 0) - np.log(RECON_SAMPLES))).numpy()
    return out


def explain_records(net, x: np.ndarray, codes: np.ndarray, baseline: np.ndarray, encoding: dict,
                    rows: list[list[str]], top: int = 3) -> list[str]:
    """Per record, the columns that raise its score most: gradient x (x - the normal rows' mean) of the distance
    to its nearest normal codes (held fixed), a first-order share per feature (Shrikumar et al. 2017), summed over
    a categorical column's one-hot dims. Named by the record's own value: `src_bytes=54540 (+0.149)`,
    `service=private (+0.284)`; an unseen category (all zeros: the model cannot weigh it) comes first."""
    import torch

    normal = torch.from_numpy(np.ascontiguousarray(codes, np.float32))
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).requires_grad_(True)
    mu, _ = net.encode(xt)
    _, idx = _latent_distance(mu.detach(), normal)
    (mu[:, None] - normal[idx]).norm(dim=2).mean(1).sum().backward()
    share = (xt.grad * (xt.detach() - torch.from_numpy(baseline.astype(np.float32)))).numpy()
    widths = [len(c.get("categories", [None])) for c in encoding["columns"]]
    share = np.add.reduceat(share, np.cumsum([0] + widths[:-1]), axis=1)        # (N, features) -> (N, columns)
    out = []
    for row, r in zip(share, rows):
        unseen, named = [], []
        for j in np.argsort(-row):
            c = encoding["columns"][j]
            value = r[c["index"]].strip()
            if "categories" in c and value not in c["categories"]:
                unseen.append(f"{c['name']}={value} (unseen)")
            elif row[j] > 0:
                named.append(f"{c['name']}={value} ({row[j]:+.3g})")
        out.append("; ".join((unseen + named)[:top]))
    return out


def _label_index(names: list[str], label_column: str, path) -> int:
    if label_column not in names:
        raise ValueError(f"{path}: no column {label_column!r} (columns: {', '.join(names[:8])}, ...); "
                         f"name the label column with --label-column")
    return names.index(label_column)


def split_normal(path, names: list[str], rows: list[list[str]], label_column: str, normal_label: str, seed: int,
                 holdout: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the normal records: (fit, held out), a `holdout` share held out at random by `seed`."""
    j = _label_index(names, label_column, path)
    normal = [i for i, r in enumerate(rows) if len(r) == len(names) and r[j].strip() == normal_label]
    if len(normal) < 20:
        raise ValueError(f"{path}: {len(normal)} records labelled {normal_label!r} in column {label_column!r}; "
                         f"a detector needs at least 20 normal records (--normal-label)")
    order = np.random.default_rng(seed).permutation(normal)
    n_held = max(1, int(round(len(order) * holdout)))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def train_traffic(path: str | Path, label_column: str = "attack_type", normal_label: str = "normal",
                  holdout: float = 0.2, steps: int = TRAFFIC_TRAINING["steps"], seed: int = 0, refresh: bool = False,
                  progress: bool = True, name: str | None = None) -> dict:
    """Train (or find cached) a traffic detector on FILE's normal records; returns its detector.json (+ folder)."""
    from flows.train import train_windows
    from formats.tabular import encode, feature_names, fit_encoding, read_records
    from models.registry import load_model

    path = Path(path).expanduser()
    names, rows, lines = read_records(path)
    fit, held = split_normal(path, names, rows, label_column, normal_label, seed, holdout)
    encoding = fit_encoding(names, [rows[i] for i in fit], ignore=(label_column, *TRAFFIC_IGNORE), every=rows)
    x_fit, _, _ = encode(encoding, [rows[i] for i in fit], [lines[i] for i in fit])
    x_held, _, _ = encode(encoding, [rows[i] for i in held], [lines[i] for i in held])
    x_fit, x_held = x_fit[~np.isnan(x_fit).any(1)], x_held[~np.isnan(x_held).any(1)]
    about = {"job": "anomaly-traffic", "file": path.name, "label_column": label_column, "normal_label": normal_label,
             "seed": seed, "holdout": holdout}
    training = {**TRAFFIC_TRAINING, "steps": steps, "seed": seed, "epoch_steps": min(TRAFFIC_TRAINING["epoch_steps"], steps)}
    trained = train_windows(f"traffic-{path.stem}", (), about, (x_fit, None), (x_held, None), TRAFFIC_MODEL, training,
                            refresh=refresh, progress=progress, name=None, dense=True, job="anomaly-traffic")
    folder, model_key = trained.folder, trained.manifest["key"]
    config = {"quantile": TRAFFIC_QUANTILE, "label_column": label_column, "normal_label": normal_label}
    stage = Stage("anomaly-traffic", VERSION, name or path.stem, config, upstream=(model_key,))

    def fill(tmp: Path) -> dict:
        import safetensors.numpy
        import torch

        net = load_model(Path(folder))
        with torch.no_grad():
            codes = net.encode(torch.from_numpy(x_fit))[0].numpy()                # (fit records, latent)
        write_bytes_atomic(tmp / CODES, safetensors.numpy.save({"codes": codes}))
        held_scores = traffic_scores(net, x_held, codes)
        thresholds = {k: float(np.quantile(v, TRAFFIC_QUANTILE)) for k, v in held_scores.items()}
        detector = {"model": str(folder), "model_key": model_key, "source": str(path), **config,
                    "thresholds": thresholds, "fit_records": len(x_fit), "held_records": len(x_held),
                    "features": feature_names(encoding), "baseline": x_fit.mean(0).tolist(), "encoding": encoding,
                    "seconds": _train_seconds([folder])}
        write_json_atomic(tmp / "detector.json", detector)
        return {"thresholds": thresholds}

    out = run_stage(stage, fill, refresh).folder
    return {**json.loads((out / "detector.json").read_text()), "folder": str(out)}


def traffic_detector(model: str | None, path: Path, names: list[str]) -> tuple[Path, dict]:
    """--model, or the newest traffic detector whose input columns are all among the file's `names` (one trained
    on another layout would read the wrong fields: most records 'unseen' and no warning)."""
    def lacks(detector: dict) -> list[str]:
        return [c["name"] for c in detector["encoding"]["columns"] if c["name"] not in names]

    folder = resolve_detector(model, "anomaly-traffic", fits=lambda d: not lacks(d))
    if folder is None:
        raise FileNotFoundError(f"{path}: no traffic detector was trained on its columns ({', '.join(names[:6])}"
                                f"{', ...' if len(names) > 6 else ''}; {len(detectors('anomaly-traffic'))} known, "
                                f"for other columns); train one on it (aeflow anomaly traffic train FILE --name NAME) "
                                f"or name one with --model")
    detector = json.loads((folder / "detector.json").read_text())
    missing = lacks(detector)                           # only --model's can: the newest was picked among fits
    if missing:
        raise ValueError(f"{path}: lacks {len(missing)} column(s) that detector {folder.name} was trained on: "
                         f"{', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}")
    return folder, detector


def normal_codes(folder: Path) -> np.ndarray:
    """The codes of a traffic detector's normal fit records (N, latent)."""
    import safetensors.numpy

    return safetensors.numpy.load_file(str(folder / CODES))["codes"]


def score_traffic(path: str | Path, out_dir: str | Path, model: str | None = None, explain: bool = False) -> dict:
    """Score every record of FILE into OUT_DIR/scores.csv; returns report.json."""
    from formats.tabular import encode, read_records
    from models.registry import load_model

    path, out = Path(path).expanduser(), Path(out_dir).expanduser()
    names, rows, lines = read_records(path)
    folder, detector = traffic_detector(model, path, names)
    # the detector's columns found by name: another order, or the label column absent
    at = {n: j for j, n in enumerate(names)}
    encoding = {"names": names, "columns": [{**c, "index": at[c["name"]]} for c in detector["encoding"]["columns"]]}
    x, unseen, bad = encode(encoding, rows, lines)
    ok = ~np.isnan(x).any(1)
    if not ok.any():
        reason, n = Counter(b["reason"] for b in bad).most_common(1)[0]
        raise ValueError(f"{path}: no usable record: {n:,} of {len(rows):,} rows: {reason}")
    net, codes = load_model(Path(detector["model"])), normal_codes(folder)
    t0 = time.perf_counter()
    scores = {k: np.full(len(x), np.nan) for k in ("score", "kl", "recon_score")}
    for k, v in traffic_scores(net, x[ok], codes).items():
        scores[k][ok] = v
    seconds = time.perf_counter() - t0
    flags = np.nan_to_num(scores["score"], nan=-np.inf) >= detector["thresholds"]["score"]
    why = [""] * len(x)
    if explain and flags.any():
        idx = np.flatnonzero(flags)
        for i, text in zip(idx, explain_records(net, x[idx], codes, np.asarray(detector["baseline"]), encoding,
                                                [rows[i] for i in idx])):
            why[i] = text
    label = names.index(detector["label_column"]) if detector["label_column"] in names else None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["line", "score", "kl", "recon_score", "flag", "unseen_categories"] + (["label"] if label is not None else [])
               + (["explain"] if explain else []))
    for i, r in enumerate(rows):
        cells = [lines[i]] + ["" if np.isnan(scores[k][i]) else f"{scores[k][i]:.6g}" for k in ("score", "kl", "recon_score")]
        cells += ["" if not ok[i] else int(flags[i]), int(unseen[i])]      # unscored: no flag, not "normal"
        cells += [r[label].strip() if len(r) == len(names) else ""] if label is not None else []
        w.writerows([cells + ([why[i]] if explain else [])])
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "scores.csv", buf.getvalue().encode())
    report = {"file": str(path), "detector": folder.name, "records": len(rows), "scored": int(ok.sum()),
              "flagged": int(flags.sum()), "threshold": detector["thresholds"]["score"],
              "records_with_unseen_categories": int((unseen > 0).sum()), "bad_rows": bad,
              "records_per_s": round(int(ok.sum()) / max(seconds, 1e-9)), "out": str(out / "scores.csv")}
    write_json_atomic(out / "report.json", report)
    return report
