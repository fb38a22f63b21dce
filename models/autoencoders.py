"""Denoising autoencoders for images: the textbook bottleneck `conv_ae` and the skip-connected `skip_dae`.

Both learn x from y = x + sigma/255 * N(0, 1), the corruption being drawn on the fly inside `loss`
(DnCNN protocol: images in [0, 1], sigma on the 0-255 scale, the noisy input is not clipped).
A fixed `sigma` trains a sigma-specific model; a (lo, hi) pair draws sigma uniformly per image
(a blind model, DnCNN-B style).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator

from models.degrade import camera_noise, noise_level

Sigma = float | tuple[float, float]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_sigma(v):
    lo, hi = (v, v) if isinstance(v, (int, float)) else v
    if not 0 <= lo <= hi <= 255:
        raise ValueError(f"sigma must lie in [0, 255] with lo <= hi, got {v}")
    return v


class DenoisingAE(nn.Module):
    """Shared corruption, loss and metrics; a subclass defines only `forward(y) -> x_hat`."""

    cfg: _Config

    def sigma_range(self) -> tuple[float, float]:
        s = self.cfg.sigma
        return (s, s) if isinstance(s, (int, float)) else s

    def corrupt(self, x: torch.Tensor, gen: torch.Generator, sigma: float | None = None) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] -> y = x + sigma/255 * N(0, 1); sigma drawn per image unless given.
        A `camera` model draws camera noise instead (models/degrade.py), unless a sigma is given."""
        if getattr(self.cfg, "noise", "gaussian") == "camera" and sigma is None:
            return camera_noise(x, gen).to(x.dtype)
        lo, hi = (sigma, sigma) if sigma is not None else self.sigma_range()
        s = lo + (hi - lo) * torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device)
        return x + (s / 255.0) * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)

    def loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return F.mse_loss(self(self.corrupt(x, gen)).float(), x.float())

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        """Validation at a fixed sigma (the model's own, or 25 for a blind model; camera noise for a camera
        model), the model estimating the level itself when it takes one: loss and PSNR in dB."""
        lo, hi = self.sigma_range()
        camera = getattr(self.cfg, "noise", "gaussian") == "camera"
        sigma = None if camera else lo if lo == hi else 25.0
        x_hat = self(self.corrupt(x, gen, sigma)).float().clamp(0, 1)
        mse = ((x_hat - x.float()) ** 2).flatten(1).mean(1)   # per image
        return {"loss": mse.mean().item(), "psnr": (-10 * torch.log10(mse.clamp_min(1e-10))).mean().item()}

    def pad_multiple(self) -> int:
        raise NotImplementedError

    def _pad(self, y: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Pad H, W up to the multiple the down-sampling needs (reflect, so borders look natural)."""
        m = self.pad_multiple()
        h, w = y.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            y = F.pad(y, (0, pw, 0, ph), mode=mode)
        return y, h, w


# ---------------------------------------------------------------- conv_ae: the textbook baseline

class ConvAEConfig(_Config):
    kind: Literal["conv_ae"] = "conv_ae"
    channels: int = 1                               # 1 gray, 3 colour
    widths: tuple[int, ...] = (32, 64, 128)         # one strided conv per entry: H/2, H/4, H/8 bottleneck
    sigma: Sigma = 25.0                             # 0-255 scale; (lo, hi) = blind

    _sigma = field_validator("sigma")(_check_sigma)


class ConvAE(DenoisingAE):
    """Strided-conv encoder to an H/8 bottleneck, transposed-conv decoder, no skips (Vincent et al. 2010
    style denoising AE, convolutional). Kept as the baseline: it loses detail at the bottleneck."""

    def __init__(self, cfg: ConvAEConfig):
        super().__init__()
        self.cfg = cfg
        enc, dec, c = [], [], cfg.channels
        for w in cfg.widths:
            enc += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = w
        for w in reversed((cfg.channels,) + tuple(cfg.widths[:-1])):
            dec += [nn.ConvTranspose2d(c, w, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = w
        dec[-1] = nn.Sigmoid()                       # clean image in [0, 1]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def pad_multiple(self) -> int:
        return 2 ** len(self.cfg.widths)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y, h, w = self._pad(y)
        return self.decoder(self.encoder(y))[..., :h, :w]


# ---------------------------------------------------------------- skip_dae: U-Net / RED-Net style

class SkipDAEConfig(_Config):
    kind: Literal["skip_dae"] = "skip_dae"
    channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128)         # features per level; level i runs at H / (unshuffle * 2^i)
    blocks: tuple[int, ...] = (1, 1, 2)             # residual blocks per level (the bottom gets the most)
    unshuffle: int = 2                              # pixel-unshuffle first (FFDNet): 4x less work per conv
    sigma: Sigma = 25.0
    noise: Literal["gaussian", "camera"] = "gaussian"   # training corruption: white Gaussian, or a camera's
    noise_map: bool = False                         # takes a noise level (FFDNet's map); estimates it when not given

    _sigma = field_validator("sigma")(_check_sigma)

    @field_validator("blocks")
    @classmethod
    def _same_length(cls, v, info):
        if len(v) != len(info.data.get("widths", v)):
            raise ValueError(f"blocks {v} needs one entry per width {info.data.get('widths')}")
        return v


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)            # each block starts as the identity: stable from step 0
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(F.relu(self.conv1(h), inplace=True))


class SkipDAE(DenoisingAE):
    """Encoder-decoder with symmetric additive skips (RED-Net, Mao et al. 2016; DRUNet, Zhang et al. 2021)
    that predicts the noise residual: x_hat = y - f(y).

    The image is pixel-unshuffled first (FFDNet, Zhang et al. 2018), so every level runs at half the
    resolution or less, and the width grows where the resolution is low. Any H, W: padded, then cropped back.
    """

    def __init__(self, cfg: SkipDAEConfig):
        super().__init__()
        self.cfg = cfg
        w, r = cfg.widths, cfg.unshuffle
        cin = cfg.channels * r * r
        self.head = nn.Conv2d(cin, w[0], 3, padding=1)
        self.enc = nn.ModuleList(nn.Sequential(*[ResBlock(w[i]) for _ in range(cfg.blocks[i])]) for i in range(len(w) - 1))
        self.down = nn.ModuleList(nn.Conv2d(w[i], w[i + 1], 2, stride=2) for i in range(len(w) - 1))
        self.bottom = nn.Sequential(*[ResBlock(w[-1]) for _ in range(cfg.blocks[-1])])
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in reversed(range(len(w) - 1)))
        self.dec = nn.ModuleList(nn.Sequential(*[ResBlock(w[i]) for _ in range(cfg.blocks[i])]) for i in reversed(range(len(w) - 1)))
        self.tail = nn.Conv2d(w[0], cin, 3, padding=1)
        if cfg.noise_map:
            self.head = nn.Conv2d(cin + 1, w[0], 3, padding=1)      # + the noise-level map
            # CBDNet-style estimator, apart from the denoiser: a log-level per place, averaged over the image
            self.estimator = nn.Sequential(nn.Conv2d(cin, 32, 3, padding=1), nn.ReLU(inplace=True),
                                           nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                           nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                           nn.Conv2d(32, 1, 1))

    def pad_multiple(self) -> int:
        return self.cfg.unshuffle * 2 ** (len(self.cfg.widths) - 1)

    def _log_level(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) noisy -> (B,) the estimator's log1p(level): a guess per place, averaged over the image."""
        return self.estimator(F.pixel_unshuffle(self._pad(y)[0], self.cfg.unshuffle)).float().mean((1, 2, 3))

    def estimate_level(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) noisy -> (B,) estimated noise level on the 0-255 scale (a noise_map model only)."""
        return torch.expm1(self._log_level(y).clamp(0, 6))

    def loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.cfg.noise_map:
            return super().loss(x, gen)
        y = self.corrupt(x, gen)
        level = noise_level(y, x)
        guess = self._log_level(y)
        est_loss = F.mse_loss(guess, torch.log1p(level))
        # Half the batch sees the estimator's own guess, so blind use (no level given) is trained too.
        told = torch.where(torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5, level,
                           torch.expm1(guess.detach().clamp(0, 6)))
        return F.mse_loss(self(y, told).float(), x.float()) + 0.01 * est_loss

    def forward(self, y: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """y (B, C, H, W) -> x_hat; level (B,) on the 0-255 scale for a noise_map model (estimated if None)."""
        if self.cfg.noise_map and level is None:
            level = self.estimate_level(y)
        y, h, w = self._pad(y)
        f = F.pixel_unshuffle(y, self.cfg.unshuffle)        # (B, C, H, W) -> (B, C*r*r, H/r, W/r)
        if self.cfg.noise_map:
            level = torch.as_tensor(level, device=y.device, dtype=f.dtype).reshape(-1, 1, 1, 1)
            f = torch.cat([f, (level / 255).expand(f.shape[0], 1, *f.shape[-2:]).to(f.dtype)], 1)
        f = self.head(f)
        skips = []
        for enc, down in zip(self.enc, self.down):
            f = enc(f)
            skips.append(f)
            f = down(f)                                      # halve H, W; widen
        f = self.bottom(f)
        for up, dec in zip(self.up, self.dec):
            f = dec(up(f) + skips.pop())                     # symmetric additive skip
        noise = F.pixel_shuffle(self.tail(f), self.cfg.unshuffle)
        return (y - noise)[..., :h, :w]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
