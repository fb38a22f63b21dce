"""`aeflow denoise adapt`: the Neighbor2Neighbor pieces (models/selfsup.py), a denoiser that learns from noisy
images alone, and the command end to end (cached, usable by name)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def test_neighbour_pairs_are_two_different_adjacent_pixels_of_each_cell():
    from models.selfsup import neighbour_picks, shuffle_down, take

    y = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    first, second = neighbour_picks(y, torch.Generator().manual_seed(0))
    a, b = take(y, first), take(y, second)
    assert a.shape == b.shape == (2, 3, 4, 4)
    diff = (a - b).abs()                                  # same row: 1 apart; same column: 8 apart (the width)
    assert ((diff == 1) | (diff == 8)).all()
    assert (a[:, 1] - a[:, 0] == 64).all()                # every channel takes the same pixel
    sub = shuffle_down(y, 2)                              # (8, 3, 4, 4): sub-image k holds every 2nd pixel
    assert sub.shape == (8, 3, 4, 4) and torch.equal(sub[0, 0], y[0, 0, 0::2, 0::2])
    assert torch.equal(sub[3, 0], y[0, 0, 1::2, 1::2])


def test_a_denoiser_learns_from_noisy_images_alone():
    """A 5x5 convolution trained by the Neighbor2Neighbor loss on noisy patches of smooth images (no clean
    image seen) removes most of the noise."""
    from models.selfsup import Neighbor2Neighbor

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    clean = (0.5 + 0.3 * torch.sin(3 * xx[None, None] + torch.rand(16, 1, 1, 1, generator=gen) * 6)
             * torch.cos(2 * yy)).expand(16, 3, 32, 32)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    net = torch.nn.Conv2d(3, 3, 5, padding=2, padding_mode="reflect")
    learner = Neighbor2Neighbor(net, pd=1)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(300):
        loss = learner.loss(noisy, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err = (net(noisy) - clean).pow(2).mean()
    assert err < 0.3 * (noisy - clean).pow(2).mean()      # noise power 0.0100 -> 0.0026


def _noisy_folder(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:72] / 72
    for i in range(n):
        img = 0.5 + 0.3 * np.sin(6 * xx + i)[..., None] * np.cos(5 * yy)[..., None] * np.ones(3)
        noisy = np.clip(img + rng.normal(0, 0.06, img.shape), 0, 1)
        Image.fromarray((noisy * 255).round().astype(np.uint8)).save(folder / f"shot-{i}.png")
    return folder


def test_denoise_adapt_is_cached_and_its_model_denoises_by_name(tmp_path):
    noisy = _noisy_folder(tmp_path / "noisy")
    env = {**os.environ, "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "flows.cli", "denoise", "adapt", str(noisy), "--steps", "2", "--name", "my-camera"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr
    folder = Path(first.stdout.split("model ", 1)[1].split()[0])
    cfg = json.loads((folder / "config.json").read_text())
    assert folder.name.startswith("my-camera-") and cfg["init"]["model"] == "skip-dae-color"
    assert cfg["data"]["job"] == "denoise"                                 # listed with the denoisers
    assert cfg["adapt"]["loss"] == "neighbor2neighbor" and cfg["steps"] == 2 and "val_loss" in cfg["metrics"]
    built = (json.loads((folder / "manifest.json").read_text())["created"],
             (folder / "model.safetensors").stat().st_mtime_ns)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and f"model {folder}" in again.stdout
    assert built == (json.loads((folder / "manifest.json").read_text())["created"],
                     (folder / "model.safetensors").stat().st_mtime_ns)          # cached: nothing trained again
    run = subprocess.run([sys.executable, "-m", "flows.cli", "denoise", "run", str(noisy), str(tmp_path / "out"),
                          "--model", "my-camera"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "out" / ".aeflow" / "report.json").read_text())
    assert report["models"] == {folder.name: 3}
    out = np.asarray(Image.open(tmp_path / "out" / "shot-0.png"))
    assert out.shape == (64, 72, 3)
