"""The latent toolbox: models/latent.py's procedures, and `aeflow latent map|manifold|traverse|interpolate` on a
tiny family model, the shipped level and music models, and its one-line refusal of a model without a code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_slerp_keeps_the_ends_and_the_norm_and_lerp_is_the_straight_line():
    from models.latent import interpolate, slerp

    a, b = torch.tensor([[3.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 3.0], [0.0, 2.0]])   # a row per window
    path = interpolate(a, b, 5, spherical=True)
    assert path.shape == (5, 2, 2) and torch.allclose(path[0], a) and torch.allclose(path[-1], b)
    assert torch.allclose(path[:, 0].norm(dim=-1), torch.full((5,), 3.0))        # on the circle of radius 3
    assert torch.allclose(path[:, 1], b[1].expand(5, 2))                          # equal ends: no NaN
    assert torch.allclose(interpolate(a, b, 3)[1], (a + b) / 2)
    assert torch.allclose(slerp(a[0], b[0], 0.5), torch.tensor([3, 3]) / 2 ** 0.5)


def test_traverse_lattice_and_the_units_a_decoder_uses():
    from models.vaes import VAE, VAEConfig
    from models.latent import decoder_sensitivity, gaussian_quantiles, lattice, traverse

    z = traverse(torch.zeros(4), [1, 3], torch.tensor([-1.0, 0.0, 2.0]))
    assert z.shape == (2, 3, 4) and z[1, 2, 3] == 2 and z[1, 2, 1] == 0 and z[0, 0, 1] == -1
    q = gaussian_quantiles(5)
    assert torch.allclose(q, -q.flip(0)) and abs(q[-1].item() - 1.645) < 1e-3   # the 95 % quantile
    grid = lattice(torch.zeros(3), (0, 2), torch.tensor([0.0, 1.0]), torch.tensor([5.0, 6.0, 7.0]))
    assert grid.shape == (3, 2, 3) and grid[0, 1, 0] == 1 and grid[0, 0, 2] == 7   # top row: the largest y
    net = VAE(VAEConfig(shape=(16,), body="mlp", widths=(8,), latent=3)).eval()
    with torch.no_grad():
        net.from_z.weight[:, 1] = 0                         # unit 1 reaches nothing: a collapsed unit
    s = decoder_sensitivity(net)
    assert s[1] == 0 and s[0] > 0 and s[2] > 0


@pytest.fixture(scope="module")
def tiny_vae():
    """A 2-D vae on the 8x8 digits: 60 steps (a second or two)."""
    from flows.family import train_family

    return str(train_family("vae", latent=2, steps=60, progress=False, name="latent-test-vae").folder)


def _png(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()                                                   # a real, whole PNG
    assert im.format == "PNG"
    return im


def test_each_latent_command_writes_a_png_of_the_expected_size_and_a_report(tmp_path, tiny_vae):
    from flows.latent import latent_interpolate, latent_manifold, latent_map, latent_traverse

    m = latent_map(tiny_vae, str(tmp_path / "map"))
    assert m["method"] == "direct" and m["items"] == 360 and 0 <= m["knn5_2d"] <= 1
    im = _png(tmp_path / "map" / "map.png")
    assert im.width > 700 and im.height > 600
    pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    from formats.figures import PALETTE
    assert sum((pixels == c).all(1).any() for c in PALETTE[:10]) == 10           # a colour per digit
    assert json.loads((tmp_path / "map" / "report.json").read_text())["png"] == "map.png"

    latent_manifold(tiny_vae, str(tmp_path / "m4"), n=4)
    latent_manifold(tiny_vae, str(tmp_path / "m8"), n=8)
    small, big = _png(tmp_path / "m4" / "manifold.png"), _png(tmp_path / "m8" / "manifold.png")
    assert big.width - small.width == 4 * (64 + 2) and big.height - small.height == 4 * (64 + 2)   # 64 px cells

    t = latent_traverse(tiny_vae, str(tmp_path / "t"), dims=[0, 1], steps=5)
    assert t["dims"] == [0, 1] and _png(tmp_path / "t" / "traverse.png").height > 2 * 64
    i = latent_interpolate(tiny_vae, "3", "17", str(tmp_path / "i"), steps=6)
    assert i["path"] == "lerp" and len(i["labels"]) == 2
    assert _png(tmp_path / "i" / "interpolate.png").width > 8 * 64                 # A, 6 steps, B


def test_a_2d_map_of_an_8d_code_uses_tsne_without_umap(tmp_path):
    from flows.family import train_family
    from flows.latent import latent_map

    folder = str(train_family("ae", latent=8, steps=30, progress=False, name="latent-test-ae8").folder)
    r = latent_map(folder, str(tmp_path / "map"), n=200)
    import importlib.util
    assert r["method"] == ("umap" if importlib.util.find_spec("umap") else "tsne") and r["latent"] == 8
    with pytest.raises(ValueError, match="needs a 2-D code"):
        latent_map(folder, str(tmp_path / "x"), method="direct")


def test_shipped_level_and_music_models_decode_a_manifold_and_a_traversal(tmp_path):
    from flows.latent import latent_manifold, latent_traverse

    lv = latent_manifold("mario-vae", str(tmp_path / "lv"), n=3)
    assert len(lv["dims"]) == 2 and _png(tmp_path / "lv" / "manifold.png").width > 3 * 28 * 6
    mu = latent_traverse("music-melody-2bar", str(tmp_path / "mu"), dims=[0, 5], steps=3)
    assert mu["job"] == "music" and _png(tmp_path / "mu" / "traverse.png").height > 2 * 20


def _aeflow(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_the_latent_commands_refuse_a_model_without_a_bottleneck_in_one_line(tmp_path):
    r = _aeflow("latent", "map", "skip-dae-color", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and "Prefect" not in line]
    assert len(lines) == 1 and "no bottleneck" in lines[0] and "skip-dae-color" in lines[0]


def test_latent_manifold_from_the_command_line_is_a_prefect_run(tmp_path, tiny_vae):
    r = _aeflow("latent", "manifold", tiny_vae, str(tmp_path / "out"), "--n", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "manifold.png" in r.stdout
    im = _png(tmp_path / "out" / "manifold.png")
    assert im.width > 5 * 64 and im.height > 5 * 64
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dims"] == [0, 1] and len(report["values_x"]) == 5


def test_music_interpolate_covers_every_bar_window_by_window(tmp_path):
    """Two 8-bar clips: 4 windows of the 2-bar model, each step as long as the clips; statistics per step."""
    from flows.music import ENCODINGS, interpolate_music, sample_music
    from formats.music import midi_to_roll

    clips = sample_music(str(tmp_path / "clips"), n=2, bars=8, seed=3)
    a, b = (str(tmp_path / "clips" / c["midi"]) for c in clips["clips"])
    r = interpolate_music(a, b, str(tmp_path / "morph"), steps=4)
    assert r["windows"] == 4 and r["bars"] == 8 and r["path"] == "slerp"
    roll = midi_to_roll(tmp_path / "morph" / "step-02.mid", ENCODINGS["melody"]).roll
    assert roll.shape[1] >= 7 * 16                                            # not just the first 2 bars
    steps = r["stats"]["steps"]
    assert len(steps) == 4 and all(s["notes_per_bar"] > 0 and s["pitch_range"] > 0 for s in steps)
    assert r["stats"]["a"]["notes_per_bar"] > 0 and r["stats"]["b"]["notes_per_bar"] > 0
    corpus = r["stats"]["corpus"]                            # Essen windows as long as the steps
    assert 1 < corpus["notes_per_bar"] < 16 and corpus["pitch_range"] > 0 and corpus["windows"] == 500
