"""Autoencoders: the AE base of the family with its non-VAE variants, and the image denoisers.

The family (vaes.py builds the VAE and cvae on the same base) is one design: a body (models/blocks.py: mlp,
conv) and an output head (models/likelihoods.py: bernoulli, gaussian, categorical) chosen by the config, and
each variant overrides one method of `AE`:

    ae              x -> encode -> z -> decode -> head.nll(x)               (a non-linear PCA)
    dae             the same from a corrupted x (Vincent et al., ICML 2008): `terms`
    contractive_ae  + lambda * ||J_f(x)||_F^2 (Rifai et al., ICML 2011): `terms`

The latent contract every bottleneck model keeps (models/latent.py relies on it): `cfg.latent`,
`encode(x, cond) -> (mu, logvar or None)`, `decode(z, cond) -> head parameters`,
`draw(params, gen, temperature) -> data` (temperature 0: the most likely data).

The denoisers `conv_ae` and `skip_dae` learn x from y = x + sigma/255 * N(0, 1), the corruption being drawn on
the fly inside `loss` (DnCNN protocol: images in [0, 1], sigma on the 0-255 scale, the noisy input is not
clipped). A fixed `sigma` trains a sigma-specific model; a (lo, hi) pair draws sigma uniformly per image
(a blind model, DnCNN-B style).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator, model_serializer, model_validator

from models.blocks import BODIES
from models.degrade import camera_noise, noise_level
from models.likelihoods import HEADS

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


# ---------------------------------------------------------------- the AE base of the family

class AEConfig(_Config):
    kind: Literal["ae"] = "ae"
    shape: tuple[int, ...]                       # one example: (C, H, W), (C, L) or (D,) values; (rows, cols) tokens
    body: Literal["mlp", "conv"] = "conv"        # models/blocks.py
    widths: tuple[int, ...] = (64, 128, 256)     # mlp: hidden sizes; conv: first at full size, then each halves
    latent: int = 32
    head: Literal["bernoulli", "gaussian", "categorical"]    # models/likelihoods.py; left out: categorical with
    #                                              a vocab (token grids), else bernoulli (intensities in [0, 1])
    # the categorical head's options (likelihoods.Categorical says what each does)
    vocab: int | None = None                     # categories per cell (tiles, pitch tokens)
    dims: Literal[1, 2] = 2                      # 2: conv over the grid; 1: conv over cols, rows as channels
    unique: tuple[int, ...] = ()                 # tokens that occur once per grid (Lode Runner's spawn)
    ar: int = 0                                  # dims=1: each step also sees the `ar` steps before it
    columns: tuple[tuple[int, ...], ...] = ()    # dims=1: a token is one of these whole columns (rows tiles each)

    @model_validator(mode="before")
    @classmethod
    def _infer_head(cls, data):
        if isinstance(data, dict) and "head" not in data:
            data = {**data, "head": "categorical" if data.get("vocab") is not None else "bernoulli"}
        return data

    @field_validator("latent", "vocab")
    @classmethod
    def _positive(cls, v):
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("ar")
    @classmethod
    def _steps(cls, v):
        if v < 0:
            raise ValueError(f"must be >= 0 steps, got {v}")
        return v

    @model_validator(mode="after")
    def _head_options(self):
        tokens = self.vocab is not None or self.unique or self.ar or self.columns
        if self.head == "categorical" and (self.vocab is None or len(self.shape) != 2):
            raise ValueError(f"head 'categorical' takes token grids: a vocab and a (rows, cols) shape, got "
                             f"vocab {self.vocab}, shape {self.shape}")
        if self.head != "categorical" and tokens:
            raise ValueError(f"vocab, unique, ar and columns are options of the categorical head, not {self.head}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # what the parse infers or leaves unused is left out: a token-grid config (and so its stage key) is what
        # it was before the family shared one design, and a model of real values carries no token options
        out = handler(self)
        inferred = "categorical" if self.vocab is not None else "bernoulli"
        drop = {"head"} if self.head == inferred else set()
        drop |= {"body"} if self.body == "conv" else set()
        drop |= {k for k in ("unique", "ar", "columns") if not out.get(k)}
        drop |= {"vocab", "dims"} if self.head != "categorical" else set()
        return {k: v for k, v in out.items() if k not in drop}


class AE(nn.Module):
    """The plain autoencoder; the base of the family. Terms of the loss are per sample (`terms`), weighted
    (`weights`) into the objective the trainer minimises (`loss`)."""

    cfg: AEConfig

    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        head = HEADS[cfg.head]
        shape = head.layout(cfg)                                          # what the body reads of one example
        encoder, decoder = BODIES[cfg.body]
        # built in this order so that a seed gives the weights it gave before the family shared one design
        self.encoder = encoder(shape, cfg.widths)
        self.to_code = nn.Linear(self.encoder.features + self.cond_dim(), self.code_size())
        self.from_z = nn.Linear(cfg.latent + self.cond_dim(), self.encoder.features)
        self.decoder = decoder(shape, cfg.widths)
        self.head = head(cfg)

    # ---- what a variant changes
    def code_size(self) -> int:
        return self.cfg.latent

    def cond_dim(self) -> int:
        return 0

    def condition(self, cond: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """What the encoder and decoder see of `cond` for a batch of n: nothing (a cvae overrides this)."""
        return None

    # ---- the two halves
    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(self.head.inputs(x))                             # (B, features)
        if (c := self.condition(cond, len(x))) is not None:
            h = torch.cat([h, c.to(h.dtype)], 1)
        return self.to_code(h), None

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if (c := self.condition(cond, len(z))) is not None:
            z = torch.cat([z, c.to(z.dtype)], 1)
        return self.head.params(self.decoder(self.from_z(z)))             # head parameters, e.g. (B, *shape)

    def draw(self, params: torch.Tensor, gen: torch.Generator | None = None, temperature: float = 0.0,
             prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Head parameters -> data (likelihoods.py). `prefix`: the grid just before, which a categorical head
        with `ar` continues."""
        if prefix is None:
            return self.head.draw(params, gen, temperature)
        return self.head.draw(params, gen, temperature, prefix)

    # ---- training
    @staticmethod
    def split(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return tuple(batch) if isinstance(batch, (tuple, list)) else (batch, None)

    def terms(self, x: torch.Tensor, cond: torch.Tensor | None, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Per-sample loss terms, unweighted; `gen` None: no random draw (the mean code)."""
        z, _ = self.encode(x, cond)
        return {"nll": self.head.nll(self.decode(z, cond), x)}

    def weights(self) -> dict[str, float]:
        """Each term's weight in the objective (1 when not named)."""
        return {}

    def objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        return sum(w.get(k, 1.0) * v for k, v in terms.items())

    def bounds(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Figures derived from the terms for validation (a VAE's ELBO)."""
        return {}

    def loss(self, batch, gen: torch.Generator) -> torch.Tensor:
        x, cond = self.split(batch)
        return self.objective(self.terms(x, cond, gen)).mean()

    @torch.no_grad()
    def metrics(self, batch, gen: torch.Generator, chunk: int = 1024) -> dict[str, float]:
        """Validation, means per sample: loss (the objective, sampled where it samples) and neg_loss (the number
        the trainer may keep the best weights by), each term unweighted, `bounds`, and the head's measure of the
        mean code's reconstruction: mse (real values) or acc (the share of token cells right)."""
        x, cond = self.split(batch)
        sums: dict[str, float] = {}
        for i in range(0, len(x), chunk):
            xb, cb = x[i:i + chunk], None if cond is None else cond[i:i + chunk]
            with torch.enable_grad():                                     # the contractive term needs a gradient
                terms = {k: v.detach() for k, v in self.terms(xb, cb, gen).items()}
            per = {"loss": self.objective(terms), **terms, **self.bounds(terms),
                   self.head.measure: self.head.score(self.reconstruct(xb, cb), xb)}
            for k, v in per.items():
                sums[k] = sums.get(k, 0.0) + v.sum().item()
        out = {k: v / len(x) for k, v in sums.items()}
        out["neg_loss"] = -out["loss"]
        return out

    def load_state_dict(self, state, *args, **kwargs):
        """Weights of token-grid VAEs saved before the family shared one design are renamed as they load."""
        old = {"to_stats.": "to_code.", "ar_": "head.ar_"}
        renamed = {}
        for k, v in state.items():
            prefix = next((p for p in old if k.startswith(p)), None)
            renamed[old[prefix] + k[len(prefix):] if prefix else k] = v
        return super().load_state_dict(renamed, *args, **kwargs)

    # ---- use
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The most likely data decoded from the mean code."""
        mu, _ = self.encode(x, cond)
        return self.draw(self.decode(mu, cond))

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Per sample (B,): the mean squared error of `reconstruct` (real values), or its share of token cells
        wrong."""
        return self.head.error(self.reconstruct(x, cond), x)


class _DenseConfig(AEConfig):
    """A variant that perturbs or differentiates x: real values only."""

    @model_validator(mode="after")
    def _dense(self):
        if self.head == "categorical":
            raise ValueError(f"a {self.kind} perturbs or differentiates its input: give it real values "
                             "(head bernoulli or gaussian), not tokens")
        return self


class DAEConfig(_DenseConfig):
    kind: Literal["dae"] = "dae"
    noise: float = 0.3                           # std of the Gaussian corruption, in x's units


class DAE(AE):
    cfg: DAEConfig

    def terms(self, x, cond, gen):
        noisy = x if gen is None else x + self.cfg.noise * torch.randn(x.shape, generator=gen, device=x.device)
        z, _ = self.encode(noisy, cond)
        return {"nll": self.head.nll(self.decode(z, cond), x)}        # the clean x, from the corrupted one


def jacobian_norm2(encode, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """||J||_F^2 per sample of z = encode(x) (B, L) with respect to x, without forming J: E_v ||J^T v||^2 over
    v ~ N(0, I) (Hutchinson), one vector-Jacobian product, differentiable. gen None: the exact norm, one
    product per latent unit (for measurement)."""
    x = x.detach().float().requires_grad_(True)
    z = encode(x)
    if gen is not None:
        v = torch.randn(z.shape, generator=gen, device=z.device)
        (g,) = torch.autograd.grad(z, x, v, create_graph=True)
        return g.flatten(1).pow(2).sum(1)
    total = 0
    for u in range(z.shape[1]):
        (g,) = torch.autograd.grad(z[:, u].sum(), x, retain_graph=True)
        total = total + g.flatten(1).pow(2).sum(1)
    return total


class ContractiveAEConfig(_DenseConfig):
    kind: Literal["contractive_ae"] = "contractive_ae"
    contraction: float = 1.0                     # lambda, the weight of ||J||_F^2


class ContractiveAE(AE):
    cfg: ContractiveAEConfig

    def terms(self, x, cond, gen):
        out = super().terms(x, cond, gen)
        out["contraction"] = jacobian_norm2(lambda v: self.encode(v, cond)[0], x, gen)
        return out

    def weights(self):
        return {"contraction": self.cfg.contraction}
