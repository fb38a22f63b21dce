"""bench/denoise.py's own helpers: the real-pair finder, the noise estimator, and a run whose baselines'
extras are missing (the bench itself is never run by the tests)."""

import sys

import numpy as np
import pytest
from PIL import Image

from bench import denoise as bench
from conftest import photo


def _png(path, x01):
    Image.fromarray(np.rint(np.clip(x01, 0, 1) * 255).astype(np.uint8).squeeze()).save(path)


def test_find_pairs_matches_noisy_and_clean_by_scene(tmp_path):
    for name in ["b_real.png", "b_mean.png", "a_real.png", "a_mean.png", "notes_mean.png"]:
        _png(tmp_path / name, photo(0))
    (tmp_path / "SOURCE.md").write_text("x")
    pairs = bench.find_pairs(tmp_path)
    assert [(s, n.name, c.name) for s, n, c in pairs] == [("a", "a_real.png", "a_mean.png"),
                                                          ("b", "b_real.png", "b_mean.png")]
    clean = tmp_path / "clean"
    clean.mkdir()
    _png(clean / "101085.png", photo(1))
    assert bench.find_pairs(clean) == []                    # a clean set: noised by the bench
    (tmp_path / "b_mean.png").unlink()
    with pytest.raises(FileNotFoundError, match="b_real.png: no reference b_mean.png"):
        bench.find_pairs(tmp_path)


def test_noise_estimate_sees_correlated_noise():
    pytest.importorskip("pywt", reason="the wavelet noise estimate needs PyWavelets, a bench extra (make bench-deps)")
    rng = np.random.default_rng(0)
    x = photo(2, 240, 240, 3).astype(np.float64)
    white = 0.04 * rng.standard_normal(x.shape)
    assert bench.estimate_noise_sigma(x + white) == pytest.approx(0.04, rel=0.1)
    # Noise correlated over neighbouring pixels (a 2x2 box filter, as demosaicing does, rescaled to the
    # same RMS): the finest wavelet band misses most of it unless the image is sampled sparsely first.
    corr = white + np.roll(white, 1, 0) + np.roll(white, 1, 1) + np.roll(np.roll(white, 1, 0), 1, 1)
    corr *= 0.04 / corr.std()
    plain, sparse = bench.estimate_noise_sigma(x + corr, stride=1), bench.estimate_noise_sigma(x + corr)
    assert plain < 0.6 * 0.04 and sparse == pytest.approx(0.04, rel=0.15)


def test_missing_extras_drop_their_rows_with_a_note(tmp_path, monkeypatch, capsys):
    gray, real = tmp_path / "data" / "gray", tmp_path / "data" / "real"
    gray.mkdir(parents=True)
    real.mkdir()
    for i in range(2):
        _png(gray / f"{i}.png", photo(i, 40, 40))
        clean = photo(i, 40, 40, 3)
        _png(real / f"s{i}_mean.png", clean)
        _png(real / f"s{i}_real.png", clean + 0.03 * np.random.default_rng(i).standard_normal(clean.shape))
    monkeypatch.setitem(sys.modules, "cv2", None)           # `import cv2` now fails as if not installed
    monkeypatch.setitem(sys.modules, "bm3d", None)
    bench.main(["--data", str(tmp_path / "data"), "--sets", "gray,real", "--sigmas", "25",
                "--models", "skip-dae-gray", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "OpenCV NLM left out: `cv2` is not installed (`pip install -e '.[bench]'`, or `pip install " \
           "opencv-python-headless`)" in out
    assert "BM3D / CBM3D left out: `bm3d` is not installed" in out
    assert "| OpenCV NLM" not in out and "| BM3D" not in out and "| CBM3D" not in out
    assert "### Real noise (noisy/clean pairs)" in out
    assert "| skip-dae-gray (skip_dae, blind σ0-55, per channel) |" in out      # the gray model, on colour pairs
    assert (tmp_path / "out.json").is_file()
