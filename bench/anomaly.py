"""Time-series anomaly detection on NAB (issue 19's benchmark; not a test). Protocol: shared/notes/anomaly.md, 1-2.

Per series: the 1-D conv AE of flows/anomaly.py (trained on the first 15 % of the series, two passes, threshold
from the training part's scores), the rolling z-score (causal, previous 288 points, |z| >= 4) and Sub-PCA (PCA on
100-point windows of the same training part, 95 % of the variance, the same per-point error, smoothing and
threshold rule as the AE: a linear AE in the same pipeline) and, with TSB-AD installed, TSB-AD's own Sub-PCA
(whole series, period windows, no threshold: tsb_sub_pca).
Per family: event F1 at the fixed threshold (flags merged at gaps <= 12 points; tp = windows overlapped by an
event, fp = events overlapping no window, summed over the family), VUS-PR (TSB-AD's own function and its sliding
window per series, as their benchmark computes it; mean over series), AUROC (point-wise, mean over series),
best point-adjusted F1 (secondary: saturated), false events per series on artificialNoAnomaly; speed.
HTM (NAB's `numenta` detector) and windowedGaussian: NAB's published detector outputs (a folder given with
--nab-results holding NAB's results/<detector>/<family>/<detector>_<file>.csv and config/thresholds.json, not in
the shared data), their `anomaly_score` re-scored with the same functions at NAB's standard-profile thresholds;
skipped with a line saying so without the folder. NAB's HTM threshold was tuned on all 58 files, these included.
Threshold rules: the AE's event counts under each rule of RULES; the rule with the best mean event F1 over the
families with anomalies (none with a false event on artificialNoAnomaly), and each family's F1 under the rule
picked on the others (held out).
VUS-PR needs TSB-AD (benchmark-only, `make bench-deps`; bench/README.md says why without its dependencies): without
it the column says "–".

    nice taskset -c 1 .venv/bin/python bench/anomaly.py [--nab ../shared/data/nab] [--nab-results DIR] [--families a,b] [--out FILE]

taskset: the models are tiny, and two torch threads on two cores shared with other work are ~15x slower per
step than one (spin-waits); models are cached stages, so a re-run measures without training again.
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

from flows.anomaly import (GAP, MARGIN, QUANTILE, SMOOTH, reconstruct_errors, scaling, score_points,  # noqa: E402
                           threshold_of, train_series)
from formats.series import (events, label_segments, match_events, moving_mean, per_point, read_series,  # noqa: E402
                            regularise, window_starts, windows)

FAMILIES = ("realKnownCause", "artificialWithAnomaly", "realTraffic", "realAdExchange", "artificialNoAnomaly")
# NAB's published detectors re-scored here (shared/notes/anomaly.md, Table E): folder name in NAB -> row name
NAB_DETECTORS = {"numenta": "HTM (NAB's published scores)", "windowedGaussian": "windowedGaussian (NAB's scores)"}
DETECTORS = {"ae": "conv AE (1-D)", "z": "rolling z (|z| >= 4)", "pca": "Sub-PCA (same pipeline)",
             "tsb_pca": "Sub-PCA (TSB-AD's: whole series, no threshold)", **NAB_DETECTORS}
# the AE's threshold rules compared (flows/anomaly.py's SMOOTH, QUANTILE, MARGIN): scores smoothed over
# window // SMOOTH steps, then MARGIN x the 99th percentile (QUANTILE 0.99) or the maximum (1.0) of the
# training part's scores
RULES = [(smooth, q, m) for smooth in (128, 32, 16, 8, 4)
         for q, margins in ((0.99, (1.5, 2.0, 3.0, 4.0, 5.0)), (1.0, (1.0, 1.5, 2.0))) for m in margins]
RULE_NAMES = {r: f"smooth window/{r[0]}, {r[2]:g} x {'p99' if r[1] < 1 else 'max'}" for r in RULES}


def nab_published(results: Path, detector: str, family: str, series) -> tuple[np.ndarray, float]:
    """One NAB detector's `anomaly_score` per point of `series` and its standard-profile threshold."""
    path = results / "results" / detector / family / f"{detector}_{series.name}.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; --nab-results wants NAB's results/{detector}/ and config/thresholds.json")
    published = read_series(path, column="anomaly_score")
    at = np.searchsorted(published.seconds, series.seconds).clip(0, len(published.seconds) - 1)
    if not np.array_equal(published.seconds[at], series.seconds):
        raise SystemExit(f"{path}: its timestamps do not cover the series' {len(series.seconds)} points")
    thresholds = json.loads((results / "config" / "thresholds.json").read_text())
    return published.values[at], float(thresholds[detector]["standard"]["threshold"])


def rolling_z(x: np.ndarray, w: int = 288) -> np.ndarray:
    """|x_t - mean| / std over the previous w points (std floored at 1e-3 x the series std); first w points 0."""
    c1, c2 = np.r_[0.0, np.cumsum(x)], np.r_[0.0, np.cumsum(x * x)]
    out = np.zeros(len(x))
    t = np.arange(w, len(x))
    mean = (c1[t] - c1[t - w]) / w
    std = np.sqrt(np.maximum((c2[t] - c2[t - w]) / w - mean ** 2, 0))
    out[w:] = np.abs(x[w:] - mean) / np.maximum(std, 1e-3 * x.std() + 1e-12)
    return out


def sub_pca(grid: np.ndarray, n_train: int, smooth: int, window: int = 100) -> tuple[np.ndarray, float]:
    """Per-step score and threshold of PCA on windows (fit on the training part)."""
    from sklearn.decomposition import PCA

    center, scale = scaling(grid[:n_train])
    z = (grid - center) / scale
    pca = PCA(0.95, random_state=0).fit(windows(z[:n_train], np.arange(n_train - window + 1), window))

    def score(part):
        starts = window_starts(len(part), window, 1)
        x = windows(part, starts, window)
        return moving_mean(per_point((pca.inverse_transform(pca.transform(x)) - x) ** 2, starts, len(part)), smooth)

    return score(z), threshold_of(score(z[:n_train]))


def tsb_sub_pca(values: np.ndarray, window: int) -> np.ndarray:
    """TSB-AD's Sub-PCA as their benchmark runs it (run_Sub_PCA with its defaults, TSB_AD/models/PCA.py),
    re-implemented: PCA with every component on all windows of the series' period (their window), each column
    standardised; a window's score is the sum over components of its distance to the component vector divided
    by the component's explained variance ratio; each point takes the score of the window centred on it. Fitted
    on the whole series, anomalies included, and without a threshold of its own."""
    from scipy.spatial.distance import cdist
    from sklearn.decomposition import PCA

    x = windows(values.astype(float), np.arange(len(values) - window + 1), window)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    x = x[:, (x != 0).any(0)]                                       # constant columns carry nothing
    pca = PCA(random_state=0).fit(x)
    score = (cdist(x, pca.components_) / pca.explained_variance_ratio_).sum(1)
    return np.r_[[score[0]] * ((window - 1) - (window - 1) // 2), score, [score[-1]] * ((window - 1) // 2)]


def point_labels(n: int, truth: list[tuple[int, int]]) -> np.ndarray:
    y = np.zeros(n, bool)
    for a, b in truth:
        y[a:b + 1] = True
    return y


def vus_window(values: np.ndarray) -> int | None:
    """TSB-AD's sliding window for a series: find_length_rank(rank=1) on the raw values (the ACF's highest peak,
    125 without one), as their benchmark_exp/Run_Detector_U.py does; None when TSB-AD is not installed."""
    try:
        from TSB_AD.utils.slidingWindows import find_length_rank
    except ImportError:
        return None
    return int(find_length_rank(values.reshape(-1, 1), rank=1))


def vus_pr(score: np.ndarray, truth: list[tuple[int, int]], window: int | None) -> float | None:
    """TSB-AD's VUS-PR, the call their get_metrics makes (version "opt", 250 thresholds); None without TSB-AD or
    without labelled windows. Rank-based: the score's scale does not matter."""
    if window is None or not truth:
        return None
    from TSB_AD.evaluation.basic_metrics import generate_curve

    if not np.isfinite(score).all():
        raise ValueError(f"VUS-PR: {int((~np.isfinite(score)).sum())} scores are not finite")
    return float(generate_curve(point_labels(len(score), truth).astype(int), score.astype(float), window)[-1])


def auroc(score: np.ndarray, truth: list[tuple[int, int]]) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = point_labels(len(score), truth)
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def best_pa_f1(score: np.ndarray, truth: list[tuple[int, int]]) -> float | None:
    """Best point-adjusted F1 over thresholds at the segments' maxima (where the optimum lies)."""
    if not truth:
        return None
    y = point_labels(len(score), truth)
    best = 0.0
    for th in {float(score[a:b + 1].max()) for a, b in truth}:
        flags = score >= th
        detected = sum(b - a + 1 for a, b in truth if flags[a:b + 1].any())
        fp = int((flags & ~y).sum())
        p, r = detected / max(detected + fp, 1), detected / y.sum()
        best = max(best, 2 * p * r / max(p + r, 1e-12))
    return best


def evaluate(score: np.ndarray, threshold: float | None, truth, window: int | None) -> dict:
    """Event counts at the threshold (None without one) and the threshold-free metrics."""
    flags = score >= threshold if threshold is not None else None
    tp, fp, fn = match_events(events(flags, GAP), truth) if flags is not None else (None,) * 3
    return {"tp": tp, "fp": fp, "fn": fn, "flagged": int(flags.sum()) if flags is not None else None,
            "vus_pr": vus_pr(score, truth, window), "auroc": auroc(score, truth), "pa_f1": best_pa_f1(score, truth)}


def rule_counts(raw: np.ndarray, raw_train: np.ndarray, window: int, index: np.ndarray, truth) -> dict:
    """Event (tp, fp, fn) of one series under each rule of RULES; raw, raw_train: the AE's unsmoothed error per
    grid step of the series and of its training part scored alone (as the flow sets its threshold: windows that
    reach past the training part would carry later points into it)."""
    out = {}
    for smooth in dict.fromkeys(r[0] for r in RULES):
        score, train = (moving_mean(x, max(1, window // smooth)) for x in (raw, raw_train))
        for _, q, m in (r for r in RULES if r[0] == smooth):
            flags = score[index] >= threshold_of(train, q, m)
            out[RULE_NAMES[smooth, q, m]] = match_events(events(flags, GAP), truth)
    return out


def held_out_rules(rows: list[dict]) -> str:
    """The rule of RULES with the best mean event F1 over some families with anomalies, among the rules with no
    false event on artificialNoAnomaly: picked on all four, and on three to score the fourth (held out)."""
    fams = [f for f in dict.fromkeys(r["family"] for r in rows) if f != "artificialNoAnomaly"]
    quiet = [r for r in rows if r["family"] == "artificialNoAnomaly"]
    if not quiet or len(fams) < 2:
        return "\nThreshold rules: no held-out choice (it needs artificialNoAnomaly and two families with anomalies)"

    def counts(fam: str, rule: str) -> list[int]:
        return [sum(r["rules"][rule][i] for r in rows if r["family"] == fam) for i in range(3)]

    def f1(c: list[int]) -> float:
        return 2 * c[0] / max(2 * c[0] + c[1] + c[2], 1)

    def pick(among: list[str]) -> str:        # no false event on the quiet series first, then the mean F1
        return max(RULE_NAMES.values(), key=lambda k: (sum(r["rules"][k][1] for r in quiet) == 0,
                                                       np.mean([f1(counts(f, k)) for f in among])))

    shipped = RULE_NAMES[SMOOTH, QUANTILE, MARGIN]
    best = pick(fams)
    lines = ["", f"Threshold rules ({len(RULES)}): on all {len(fams)} families the best is {best}; "
             f"flows/anomaly.py uses {shipped}" + ("" if best == shipped else " (NOT the best: update it)"), "",
             "| family held out | rule picked on the others | event F1 held out (tp/fp/fn) | with the rule used |",
             "|---|---|---:|---:|"]
    for fam in fams:
        k = pick([f for f in fams if f != fam])
        c, s = counts(fam, k), counts(fam, shipped)
        lines.append(f"| {fam} | {k} | {f1(c):.3f} ({c[0]}/{c[1]}/{c[2]}) | {f1(s):.3f} ({s[0]}/{s[1]}/{s[2]}) |")
    return "\n".join(lines)


def traffic(path: Path, seeds: int) -> str:
    """NSL-KDD (shared/notes/anomaly.md, section 3 and Table D's protocol): per seed, the normal records split 80/20;
    the VAE (flows/anomaly.py) and the baselines fit on the 80 %, thresholds at the p95 of the other 20 %, which are
    the negatives; every attack record is a positive. The same features for all (formats/tabular.py)."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.svm import OneClassSVM

    from flows.anomaly import normal_codes, split_normal, traffic_scores, train_traffic
    from formats.tabular import encode, read_records
    from models.registry import load_model

    names, rows, lines = read_records(path)
    label = names.index("attack_type")
    attacks = np.array([i for i, r in enumerate(rows) if r[label] != "normal"])
    results: dict[str, list[dict]] = {}
    speed = []
    for seed in range(seeds):
        det = train_traffic(path, seed=seed, progress=False)
        fit, held = split_normal(path, names, rows, "attack_type", "normal", seed)
        feats = lambda idx: encode(det["encoding"], [rows[i] for i in idx], [lines[i] for i in idx])[0]  # noqa: E731
        x_fit, x_held, x_att = feats(fit), feats(held), feats(attacks)
        x_eval = np.r_[x_held, x_att]
        y = np.r_[np.zeros(len(x_held)), np.ones(len(x_att))]
        net = load_model(Path(det["model"]))
        t0 = time.perf_counter()
        vae = traffic_scores(net, x_eval, normal_codes(Path(det["folder"])))
        speed.append(len(x_eval) / (time.perf_counter() - t0))
        pca = PCA(0.95, random_state=seed).fit(x_fit)
        pca_err = lambda x: ((pca.inverse_transform(pca.transform(x)) - x) ** 2).sum(1)  # noqa: E731
        forest = IsolationForest(n_estimators=100, random_state=seed).fit(x_fit)
        pick = np.random.default_rng(seed).choice(len(x_fit), min(5000, len(x_fit)), replace=False)
        svm = OneClassSVM(kernel="rbf", nu=0.05).fit(x_fit[pick])
        scores = {"VAE score (encoder only: distance to the 5 nearest normal codes)": vae["score"],
                  "VAE kl (encoder only: KL of q(z|x) to the prior)": vae["kl"],
                  "VAE recon_score (reconstruction probability)": vae["recon_score"],
                  "PCA reconstruction error (95 % variance)": pca_err(x_eval),
                  "Isolation Forest (100 trees)": -forest.score_samples(x_eval),
                  "One-class SVM (RBF, nu 0.05, 5,000 rows)": -svm.score_samples(x_eval)}
        for name, s in scores.items():
            flag = s >= np.quantile(s[:len(x_held)], 0.95)
            tp, fp = int((flag & (y == 1)).sum()), int((flag & (y == 0)).sum())
            recall = tp / len(x_att)
            results.setdefault(name, []).append({
                "auroc": roc_auc_score(y, s), "auprc": average_precision_score(y, s),
                "accuracy": float((flag == (y == 1)).mean()), "f1": 2 * tp / (2 * tp + fp + len(x_att) - tp),
                "recall": recall})
        print(f"nslkdd seed {seed}: " + "; ".join(f"{k.split(' (')[0]} AUROC {v[-1]['auroc']:.4f}"
                                                  for k, v in results.items()), file=sys.stderr, flush=True)
    cols = ("auroc", "auprc", "accuracy", "f1", "recall")
    out = [f"NSL-KDD {path.name}: {seeds} seeds, {len(det['features'])} features, {det['fit_records']} normal "
           f"records fitted, {det['held_records']} held out + {len(attacks)} attacks scored (mean ± std)", "",
           "| model | AUROC | AUPRC | accuracy @p95 | F1 @p95 | recall @p95 |", "|---|---:|---:|---:|---:|---:|"]
    for name, per in results.items():
        out.append(f"| {name} | " + " | ".join(f"{np.mean([r[c] for r in per]):.3f} ± {np.std([r[c] for r in per]):.3f}"
                                               for c in cols) + " |")
    out.append(f"\nVAE records scored per second (all three scores): {np.median(speed):,.0f}; training s per seed: "
               f"{det['seconds']:.1f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nab", default=str(ROOT.parent / "shared" / "data" / "nab"))
    ap.add_argument("--nab-results", default=None, help="a folder with NAB's results/numenta, "
                    "results/windowedGaussian and config/thresholds.json: their rows re-scored")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--out", default=None, help="also write the per-series rows as JSON here")
    ap.add_argument("--nslkdd", default=None, help="NSL-KDD's KDDTrain+_20Percent.txt (columns.txt beside it): "
                    "the traffic table instead of NAB")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    if args.nslkdd:
        print(traffic(Path(args.nslkdd), args.seeds))
        return
    from models.registry import load_model

    nab = Path(args.nab)
    labels = json.loads((nab / "labels" / "combined_windows.json").read_text())
    rows = []
    for family in args.families.split(","):
        for path in sorted((nab / "data" / family).glob("*.csv")):
            series = read_series(path)
            truth = label_segments(series.seconds, labels.get(f"{family}/{path.name}", []))
            t0 = time.perf_counter()
            det = train_series(path, progress=False)
            wall = time.perf_counter() - t0
            net = load_model(Path(det["model"]))
            score, seconds = score_points(series, det, net)
            grid = regularise(series)
            scaled = (grid.values - det["center"]) / det["scale"]
            raw, raw_train = (reconstruct_errors(net, x, det["window"], det["hop"])
                              for x in (scaled, scaled[:det["train_points"]]))
            pca_step, pca_th = sub_pca(grid.values, det["train_points"], det["smooth"])
            z = rolling_z(series.values)
            window = vus_window(series.values)
            row = {"family": family, "series": path.stem, "points": len(score), "train_s": det["seconds"],
                   "wall_s": round(wall, 1), "points_per_s": len(score) / max(seconds, 1e-9), "vus_window": window,
                   "ae": evaluate(score, det["threshold"], truth, window), "z": evaluate(z, 4.0, truth, window),
                   "pca": evaluate(pca_step[grid.index], pca_th, truth, window),
                   "rules": rule_counts(raw, raw_train, det["window"], grid.index, truth)}
            if window is not None and truth:
                row["tsb_pca"] = evaluate(tsb_sub_pca(series.values, window), None, truth, window)
            if args.nab_results:
                for name in NAB_DETECTORS:
                    row[name] = evaluate(*nab_published(Path(args.nab_results), name, family, series), truth, window)
            rows.append(row)
            print(f"{family}/{path.stem}: {len(score)} points, train {det['seconds']:.1f} s, VUS window {window}; "
                  + "; ".join(f"{k} {row[k]['tp']}/{row[k]['fp']}/{row[k]['fn']}" for k in DETECTORS if k in row),
                  file=sys.stderr, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print(held_out_rules(rows))
    if not args.nab_results:
        print("\nHTM and windowedGaussian rows skipped: no --nab-results (NAB's results/ and config/thresholds.json)")


def table(rows: list[dict]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"                                  # noqa: E731
    lines = ["| family | detector | event F1 @fixed (tp/fp/fn) | points flagged | VUS-PR | AUROC | best PA-F1 |",
             "|---|---|---|---:|---:|---:|---:|"]
    for family in dict.fromkeys(r["family"] for r in rows):
        part = [r for r in rows if r["family"] == family]
        for key, name in DETECTORS.items():
            if key not in part[0]:
                continue
            mean = lambda k: (lambda v: float(np.mean(v)) if v else None)([r[key][k] for r in part if r[key][k] is not None])  # noqa: E731,E501
            if part[0][key]["tp"] is None:                   # no threshold: the threshold-free columns only
                lines.append(f"| {family} | {name} | – | – | {fmt(mean('vus_pr'))} | {fmt(mean('auroc'))} | "
                             f"{fmt(mean('pa_f1'))} |")
                continue
            tp, fp, fn = (sum(r[key][k] for r in part) for k in ("tp", "fp", "fn"))
            flagged = f"{sum(r[key]['flagged'] for r in part) / sum(r['points'] for r in part):.1%}"
            if family == "artificialNoAnomaly":
                lines.append(f"| {family} | {name} | {fp / len(part):.1f} false events per series ({fp} in "
                             f"{len(part)}) | {flagged} | – | – | – |")
                continue
            f1 = 2 * tp / max(2 * tp + fp + fn, 1)
            lines.append(f"| {family} | {name} | {f1:.3f} ({tp}/{fp}/{fn}) | {flagged} | {fmt(mean('vus_pr'))} | "
                         f"{fmt(mean('auroc'))} | {fmt(mean('pa_f1'))} |")
    speed = sorted(rows, key=lambda r: r["points"])
    big = speed[-1]
    lines += ["", "| speed | value |", "|---|---:|",
              f"| points scored per second (all series: total points / total scoring time) | "
              f"{sum(r['points'] for r in rows) / sum(r['points'] / r['points_per_s'] for r in rows):,.0f} |",
              f"| training s per series (two passes, median / max) | {np.median([r['train_s'] for r in rows]):.1f} / "
              f"{max(r['train_s'] for r in rows):.1f} |",
              f"| training s for the longest series ({big['series']}, {big['points']:,} points) | {big['train_s']:.1f} |"]
    if rows[0]["vus_window"] is None:
        lines.append("\nVUS-PR: TSB-AD is not installed (`make bench-deps` installs it)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
