"""bench/anomaly.py's VUS-PR column: TSB-AD's own function where that bench extra is installed, "–" and a line
saying how to install it where not (the bench itself is never run by the tests)."""

import subprocess
import sys

import numpy as np
import pytest

from bench import anomaly as bench

TRUTH = [(1000, 1049), (2000, 2029)]


def _series_and_scores():
    rng = np.random.default_rng(0)
    values = np.sin(2 * np.pi * np.arange(3000) / 50) + 0.1 * rng.standard_normal(3000)
    found = bench.point_labels(3000, TRUTH) + 0.5 * rng.random(3000)      # every labelled point above the rest
    return values, found, rng.random(3000)


def test_vus_pr_uses_the_period_and_ranks_a_detector_that_finds_the_windows():
    pytest.importorskip("TSB_AD.evaluation.basic_metrics", reason="TSB-AD is a bench extra (make bench-deps)")
    pytest.importorskip("statsmodels", reason="TSB-AD's window choice needs statsmodels, a bench extra")
    values, found, noise = _series_and_scores()
    window = bench.vus_window(values)
    assert window == 50                                     # the ACF's peak: the sine's period
    good, chance = bench.vus_pr(found, TRUTH, window), bench.vus_pr(noise, TRUTH, window)
    assert good > 0.8 and chance < 0.2, (good, chance)
    assert bench.vus_pr(found, [], window) is None          # no labelled window (artificialNoAnomaly): no VUS-PR
    # only TSB-AD's evaluation code is used: it must not pull the deep-learning stack its metadata declares
    code = ("import sys, TSB_AD.evaluation.basic_metrics, TSB_AD.utils.slidingWindows; "
            "print(sorted({'torch', 'tensorflow', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_tsb_ad_the_column_says_dash_and_how_to_install(monkeypatch):
    for name in ("TSB_AD", "TSB_AD.utils", "TSB_AD.utils.slidingWindows"):
        monkeypatch.setitem(sys.modules, name, None)        # `import TSB_AD...` now fails as if not installed
    values, found, _ = _series_and_scores()
    window = bench.vus_window(values)
    assert window is None
    row = {"family": "realTraffic", "series": "s", "points": 3000, "train_s": 1.0, "points_per_s": 1e6,
           "vus_window": window, "ae": bench.evaluate(found, 0.75, TRUTH, window)}
    assert row["ae"]["tp"] == 2 and row["ae"]["vus_pr"] is None
    table = bench.table([row])
    assert "| realTraffic | conv AE (1-D) | 1.000 (2/0/0) | 2.7% | – | 1.000 |" in table   # 80 of 3000 flagged
    assert "`make bench-deps` installs it" in table


def test_threshold_rules_are_picked_on_the_other_families_and_never_with_false_events_on_clean_series():
    rng = np.random.default_rng(1)
    n, window, index = 2000, 128, np.arange(2000)

    def row(family, bump, truth):
        raw = rng.random(n)                                  # the training part is the first 300 steps
        raw[1500:1700] += bump                               # a broad rise: a false event under low thresholds
        for a, b in truth:
            raw[a:b + 1] += 100.0                            # labelled windows every rule finds
        return {"family": family, "rules": bench.rule_counts(raw, raw[:300], window, index, truth)}

    rows = [row("artificialNoAnomaly", 3.0, []) for _ in range(2)]
    rows += [row(f, 0.0, [(800, 850)]) for f in ("realTraffic", "realAdExchange", "realKnownCause")]
    quiet_fp = {k: sum(r["rules"][k][1] for r in rows[:2]) for k in bench.RULE_NAMES.values()}
    assert 0 < sum(fp == 0 for fp in quiet_fp.values()) < len(quiet_fp)    # some rules raise false events
    text = bench.held_out_rules(rows)
    held = [line.split(" | ") for line in text.splitlines() if line.startswith("| real")]
    assert [h[0] for h in held] == ["| realTraffic", "| realAdExchange", "| realKnownCause"]
    for h in held:
        assert quiet_fp[h[1]] == 0, h                        # a rule with false events is never picked
        assert h[2] == "1.000 (1/0/0)"                       # and it finds the held-out family's window
