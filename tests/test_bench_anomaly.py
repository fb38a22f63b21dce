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
    assert "| realTraffic | conv AE (1-D) | 1.000 (2/0/0) | – | 1.000 |" in table
    assert "`make bench-deps` installs it" in table
