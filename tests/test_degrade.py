"""The camera-noise pipeline (models/degrade.py) and the noise-level input of skip_dae."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.degrade import camera_noise, jpeg, linear_to_srgb, noise_level, srgb_to_linear, tone, untone
from models.registry import build, parse_config

from conftest import photo


def _flat(levels: list[float], channels: int = 3, size: int = 64) -> torch.Tensor:
    return torch.stack([torch.full((channels, size, size), v) for v in levels])


def test_tone_and_gamma_round_trip():
    x = torch.linspace(0, 1, 1001)
    assert torch.allclose(tone(untone(x)), x, atol=1e-5)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-4)
    assert (srgb_to_linear(x)[1:] >= srgb_to_linear(x)[:-1]).all()           # monotonic
    assert srgb_to_linear(torch.tensor(0.5)) < 0.5                            # linear light is darker mid-grey


def test_camera_noise_is_seeded_and_gives_the_clean_image_back_without_noise():
    x = torch.from_numpy(photo(1, 64, 64, 3)).permute(2, 0, 1)[None].repeat(4, 1, 1, 1)
    a = camera_noise(x, torch.Generator().manual_seed(3))
    b = camera_noise(x, torch.Generator().manual_seed(3))
    c = camera_noise(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    silent = camera_noise(x, torch.Generator().manual_seed(3), p_gaussian=0, p_jpeg=0, shot=(1e-12, 1e-12))
    assert torch.allclose(silent, torch.round(x * 255) / 255, atol=1 / 255 + 1e-6)   # nothing clipped or shifted


@pytest.mark.parametrize("channels", [1, 3])
def test_poisson_part_grows_with_brightness(channels):
    # One gain and noise draw for all (same seed per patch), flat patches from dark to bright: the sensor's
    # shot noise makes the variance in linear light grow with the signal.
    levels = [0.1, 0.3, 0.6, 0.9]
    stds = []
    for v in levels:
        y = camera_noise(_flat([v] * 8, channels), torch.Generator().manual_seed(0), p_gaussian=0, p_jpeg=0,
                         p_bayer=0, shot=(0.01, 0.012))
        lin = srgb_to_linear(y)
        stds.append(float(lin.std(dim=(1, 2, 3)).mean()))
    assert all(b > a for a, b in zip(stds, stds[1:])), stds


def test_bayer_demosaic_correlates_neighbouring_noise():
    x = _flat([0.5] * 8, 3, 64)
    def corr(p_bayer):
        n = camera_noise(x, torch.Generator().manual_seed(0), p_gaussian=0, p_jpeg=0, p_bayer=p_bayer) - x
        a, b = n[..., :, :-1].flatten(), n[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert corr(1.0) > 0.3 > abs(corr(0.0))


def test_jpeg_matches_pillow_and_leaves_8x8_blocks():
    rng = np.random.default_rng(0)
    img = (photo(2, 64, 96, 3) * 255).round().astype(np.uint8)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)     # texture JPEG has to drop
    x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
    for q in (50, 90):
        ours = jpeg(x, torch.tensor([float(q)]))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=q)
        pil = torch.from_numpy(np.asarray(Image.open(buf)).astype(np.float32) / 255).permute(2, 0, 1)[None]
        err_ours, err_pil = float(noise_level(ours, x)), float(noise_level(pil, x))
        assert abs(err_ours - err_pil) < 0.25 * err_pil, (q, err_ours, err_pil)
    # block statistics: the error jumps more across 8x8 block borders than inside blocks
    gray = torch.linspace(0, 1, 64)[None, None, None, :].repeat(1, 1, 64, 1) + 0.02 * torch.randn(1, 1, 64, 64)
    y = jpeg(gray.clamp(0, 1), torch.tensor([30.0]))
    steps = (y[..., 1:] - y[..., :-1]).abs().mean(dim=(0, 1, 2))               # (63,) column steps
    border = steps[7::8].mean()
    inside = torch.cat([steps[i::8] for i in range(7)]).mean()
    assert border > 1.5 * inside


def test_noise_level_input_steers_the_output():
    cfg = {"kind": "skip_dae", "channels": 1, "widths": [8, 16], "blocks": [1, 1], "sigma": [0, 55], "noise_map": True}
    torch.manual_seed(0)
    model = build(parse_config(cfg)).eval()
    y = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a, b = model(y, torch.tensor([5.0])), model(y, torch.tensor([50.0]))
        assert not torch.allclose(a, b)
        assert model.estimate_level(y).shape == (1,)
        loss = model.train().loss(torch.rand(2, 1, 32, 32), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
