"""Realistic camera noise for training denoisers of real photos, on any device, every draw from a generator.

clean sRGB -> linear camera RGB (inverse tone curve and gamma, inverse colour correction and white balance:
Brooks et al., "Unprocessing Images for Learned Raw Denoising", CVPR 2019) -> Poisson-Gaussian sensor noise at
a random gain (shot and read levels drawn as in that paper) on an RGGB Bayer mosaic, spread by a bilinear
demosaic, or on every channel -> white balance, colour correction, gamma and tone curve -> 8-bit levels -> JPEG at a random
quality (an 8x8 block DCT with the IJG tables, 4:2:0 chroma). Some draws are plain white Gaussian noise instead.
Gray images (C = 1, scans) skip the colour steps. Images are (B, C, H, W) floats in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- tone and gamma (Brooks et al., section 3)


def untone(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the smoothstep tone curve 3x^2 - 2x^3."""
    x = x.clamp(0, 1)
    return 0.5 - torch.sin(torch.asin((1 - 2 * x).clamp(-1, 1)) / 3)


def tone(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return 3 * x ** 2 - 2 * x ** 3


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Display sRGB -> linear light: the tone curve undone, then gamma 2.2 undone."""
    return untone(x).clamp_min(1e-8) ** 2.2


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return tone(x.clamp_min(1e-8) ** (1 / 2.2))


# ---------------------------------------------------------------- Bayer mosaic (RGGB)


def mosaic(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W) holding only each pixel's RGGB sample (zeros elsewhere); H, W even."""
    mask = torch.zeros_like(x)
    mask[:, 0, 0::2, 0::2] = 1
    mask[:, 1, 0::2, 1::2] = 1
    mask[:, 1, 1::2, 0::2] = 1
    mask[:, 2, 1::2, 1::2] = 1
    return x * mask


def demosaic(m: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaic of `mosaic`'s output: each missing sample is the mean of its nearest samples."""
    k_rb = torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], device=m.device, dtype=m.dtype)
    k_g = torch.tensor([[0.0, 0.25, 0.0], [0.25, 1.0, 0.25], [0.0, 0.25, 0.0]], device=m.device, dtype=m.dtype)
    k = torch.stack([k_rb, k_g, k_rb])[:, None]                    # (3, 1, 3, 3), one kernel per channel
    return F.conv2d(F.pad(m, (1, 1, 1, 1), mode="reflect"), k, groups=3)


# ---------------------------------------------------------------- JPEG (baseline, IJG tables)

_LUMA_Q = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_CHROMA_Q = torch.full((8, 8), 99.0)
_CHROMA_Q[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])


def _dct_matrix(device, dtype) -> torch.Tensor:
    n = torch.arange(8, device=device, dtype=dtype)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d                                                        # orthonormal: D @ D.T = I


def quant_tables(quality: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """IJG quality scaling: (B,) qualities 1-100 -> (B, 8, 8) tables."""
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    return ((base.to(q.device)[None] * scale[:, None, None] + 50) // 100).clamp(1, 255)


def _blocks_roundtrip(c: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """c (B, H, W) on the 0-255 scale, H and W multiples of 8 -> DCT, quantise with (B, 8, 8), inverse DCT."""
    b, h, w = c.shape
    d = _dct_matrix(c.device, c.dtype)
    blocks = (c - 128).reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)     # (B, h/8, w/8, 8, 8)
    coef = d @ blocks @ d.T
    t = table[:, None, None]
    coef = torch.round(coef / t) * t
    back = d.T @ coef @ d
    return back.permute(0, 1, 3, 2, 4).reshape(b, h, w) + 128


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Baseline JPEG compression and decompression of (B, C, H, W) in [0, 1] (C = 1 or 3) at (B,) qualities:
    YCbCr (JFIF), 4:2:0 chroma, 8x8 DCT quantised with the IJG tables, decoded back to 8-bit levels."""
    b, c, h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    x = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255
    if c == 1:
        y = _blocks_roundtrip(x[:, 0], quant_tables(quality, _LUMA_Q))[:, None]
    else:
        r, g, bl = x.unbind(1)
        luma = 0.299 * r + 0.587 * g + 0.114 * bl
        cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128
        cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128
        chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)                 # 4:2:0: (B, 2, H/2, W/2)
        ct = quant_tables(quality, _CHROMA_Q)
        chroma = torch.stack([_blocks_roundtrip(F.pad(chroma[:, i], (0, (-chroma.shape[-1]) % 8, 0, (-chroma.shape[-2]) % 8),
                                                      mode="replicate"), ct) for i in range(2)], 1)
        chroma = chroma[..., : (h + ph) // 2, : (w + pw) // 2]
        cb, cr = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).unbind(1)
        luma = _blocks_roundtrip(luma, quant_tables(quality, _LUMA_Q))
        cb, cr = cb - 128, cr - 128
        y = torch.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], 1)
    return (torch.round(y.clamp(0, 255)) / 255)[..., :h, :w]


# ---------------------------------------------------------------- the whole camera


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def colour_matrices(n: int, gen: torch.Generator, device) -> torch.Tensor:
    """(n, 3, 3) camera -> sRGB colour corrections like cameras': rows sum to one (grey stays grey), the
    diagonal above one and the rest negative, so noise is amplified and mixed across channels."""
    eye, mean = torch.eye(3, device=device), torch.full((3, 3), 1 / 3, device=device)
    a = _uniform(n, 0.2, 0.8, gen, device)[:, None, None]
    jitter = 0.05 * torch.randn(n, 3, 3, generator=gen, device=device)
    jitter = jitter - jitter.mean(2, keepdim=True)                       # keep rows summing to one
    return eye + a * (eye - mean) + jitter


def camera_noise(x: torch.Tensor, gen: torch.Generator, *, p_gaussian: float = 0.2, p_bayer: float = 0.7,
                 p_jpeg: float = 0.6, max_gaussian: float = 50.0, shot: tuple[float, float] = (1e-4, 0.012)) -> torch.Tensor:
    """Clean (B, C, H, W) in [0, 1] -> a noisy photo as a camera would have made it (module docstring).
    Without noise the camera gives x back (to 8-bit levels): nothing is clipped before the sensor noise."""
    with torch.autocast(x.device.type, enabled=False):      # float32 throughout: bf16 would break the DCT
        return _camera_noise(x.float(), gen, p_gaussian, p_bayer, p_jpeg, max_gaussian, shot)


def _camera_noise(x, gen, p_gaussian, p_bayer, p_jpeg, max_gaussian, shot) -> torch.Tensor:
    b, c, h, w = x.shape
    dev = x.device
    lin = srgb_to_linear(x)
    if c == 3:
        ccm = colour_matrices(b, gen, dev)                               # camera -> sRGB
        wb = torch.stack([_uniform(b, 1.9, 2.4, gen, dev), torch.ones(b, device=dev), _uniform(b, 1.5, 1.9, gen, dev)], 1)
        lin = torch.einsum("bij,bjhw->bihw", torch.linalg.inv(ccm), lin) / wb[:, :, None, None]
    gain = (0.8 + 0.1 * torch.randn(b, generator=gen, device=dev)).clamp(0.5, 1.1)
    raw = lin * gain[:, None, None, None]
    # Poisson-Gaussian: variance = shot * signal + read, log shot ~ U(log 1e-4, log 0.012), log read on a line of it
    log_shot = _uniform(b, math.log(shot[0]), math.log(shot[1]), gen, dev)
    log_read = 2.18 * log_shot + 1.20 + 0.26 * torch.randn(b, generator=gen, device=dev)
    shot, read = log_shot.exp()[:, None, None, None], log_read.exp()[:, None, None, None]
    bayer = (torch.rand(b, generator=gen, device=dev) < p_bayer)[:, None, None, None] & (c == 3)
    noise = torch.randn(raw.shape, generator=gen, device=dev) * (raw.clamp_min(0) * shot + read).sqrt()
    if c == 3:
        # The sensor measures one colour per pixel; demosaicing spreads each sample's noise to its neighbours
        # (only the noise goes through it: the signal keeps its detail, as a camera's better demosaic would).
        ph, pw = h % 2, w % 2
        padded = F.pad(noise, (0, pw, 0, ph), mode="replicate")
        noise = torch.where(bayer, demosaic(mosaic(padded)), padded)[..., :h, :w]
    noisy = raw + noise
    if c == 3:
        noisy = torch.einsum("bij,bjhw->bihw", ccm, noisy * wb[:, :, None, None])
    y = linear_to_srgb((noisy / gain[:, None, None, None]).clamp(0, 1))
    y = torch.round(y * 255) / 255                                       # the camera writes 8-bit levels
    quality = _uniform(b, 60, 95, gen, dev).round()
    use_jpeg = (torch.rand(b, generator=gen, device=dev) < p_jpeg)[:, None, None, None]
    y = torch.where(use_jpeg, jpeg(y, quality), y)
    sigma = _uniform(b, 0, max_gaussian, gen, dev)[:, None, None, None]
    plain = x + sigma / 255 * torch.randn(x.shape, generator=gen, device=dev)
    use_plain = (torch.rand(b, generator=gen, device=dev) < p_gaussian)[:, None, None, None]
    return torch.where(use_plain, plain, y)


def noise_level(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) root-mean-square of the noise y - x on the 0-255 scale: the level a noise map stands for."""
    return ((y.float() - x.float()) ** 2).flatten(1).mean(1).sqrt() * 255
