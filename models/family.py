"""The autoencoder family on one design: `ae`, `dae`, `contractive_ae`, `vae` (beta-VAE: beta > 1) and
`cvae`, over any body (models/blocks.py: mlp, conv, conv1d) and output head (models/likelihoods.py: bernoulli,
gaussian). Each variant overrides one method of `AE`:

    ae              x -> encode -> z -> decode -> head.nll(x)               (a non-linear PCA)
    dae             the same, from a corrupted x (Vincent et al., ICML 2008): `corrupt` in `loss`
    contractive_ae  + lambda * ||J_f(x)||_F^2 (Rifai et al., ICML 2011): `loss`
    vae             mu, logvar -> z = mu + sigma * eps; + beta * KL(q(z|x) || N(0, I)) (Kingma and Welling,
                    2014; Higgins et al., 2017 for beta): `encode`'s logvar and `loss`
    cvae            encoder and decoder also see the condition c (Sohn et al., NeurIPS 2015): `condition`

The latent contract every bottleneck model keeps (models/latent.py and the token-grid VAEs of vaes.py too):
`cfg.latent`, `encode(x, cond) -> (mu, logvar or None)`, `decode(z, cond) -> head parameters`,
`draw(params, gen, temperature) -> data`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator

from models.blocks import BODIES
from models.likelihoods import HEADS


class AEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["ae"] = "ae"
    shape: tuple[int, ...]                       # one input: (C, H, W) images, (C, T) series windows, (D,) vectors
    body: Literal["mlp", "conv", "conv1d"] = "mlp"
    widths: tuple[int, ...] = (512, 256)         # mlp: hidden sizes; conv / conv1d: channels, each halving H, W / T
    latent: int = 2
    head: Literal["bernoulli", "gaussian"] = "bernoulli"

    @field_validator("latent")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v


class DAEConfig(AEConfig):
    kind: Literal["dae"] = "dae"
    noise: float = 0.3                           # std of the Gaussian corruption, in x's units


class ContractiveAEConfig(AEConfig):
    kind: Literal["contractive_ae"] = "contractive_ae"
    contraction: float = 1.0                     # lambda, the weight of ||J||_F^2


class DenseVAEConfig(AEConfig):
    kind: Literal["vae"] = "vae"
    beta: float = 1.0                            # weight of the KL term; 1 = the plain VAE


class DenseCVAEConfig(DenseVAEConfig):
    kind: Literal["cvae"] = "cvae"
    cond: tuple[int, ...] = (10,)                # categories of each condition variable (digits: 10)


class AE(nn.Module):
    """The plain autoencoder; the base of the family."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        self.body = BODIES[cfg.body](cfg.shape, cfg.widths)
        self.head = HEADS[cfg.head]
        self.to_code = nn.Linear(self.body.features + self.cond_dim(), self.code_size())
        self.from_z = nn.Sequential(nn.Linear(cfg.latent + self.cond_dim(), self.body.features), nn.ReLU())

    # ---- what a variant changes
    def code_size(self) -> int:
        return self.cfg.latent

    def cond_dim(self) -> int:
        return 0

    def condition(self, cond: torch.Tensor | None, n: int) -> torch.Tensor | None:
        return None

    # ---- the two halves
    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.body.encode(x)                                        # (B, features)
        if (c := self.condition(cond, len(x))) is not None:
            h = torch.cat([h, c], 1)
        return self.to_code(h), None

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if (c := self.condition(cond, len(z))) is not None:
            z = torch.cat([z, c], 1)
        return self.body.decode(self.from_z(z))                        # (B, *shape) head parameters

    def draw(self, params: torch.Tensor, gen: torch.Generator | None = None, temperature: float = 0.0) -> torch.Tensor:
        return self.head.draw(params, gen, temperature)

    # ---- training
    @staticmethod
    def split(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return tuple(batch) if isinstance(batch, (tuple, list)) else (batch, None)

    def terms(self, x: torch.Tensor, cond: torch.Tensor | None, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Per-sample loss terms; `gen` None: no random draw (validation of the mean code)."""
        z, _ = self.encode(x, cond)
        return {"nll": self.head.nll(self.decode(z, cond), x)}

    def loss(self, batch, gen: torch.Generator) -> torch.Tensor:
        x, cond = self.split(batch)
        return sum(self.terms(x, cond, gen).values()).mean()

    @torch.no_grad()
    def metrics(self, batch, gen: torch.Generator) -> dict[str, float]:
        """Validation: loss (the training objective, sampled where it samples), mse of the mean reconstruction,
        and neg_loss, the number the trainer keeps the best weights by."""
        x, cond = self.split(batch)
        with torch.enable_grad():                                     # the contractive term needs a gradient
            terms = self.terms(x, cond, gen)
        out = {k: v.mean().item() for k, v in terms.items()}
        out["loss"] = sum(out.values())
        out["neg_loss"] = -out["loss"]
        out["mse"] = self.reconstruction_error(x, cond).mean().item()
        return out

    # ---- use
    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample mean squared error of the mean reconstruction from the mean code: (B,)."""
        mu, _ = self.encode(x, cond)
        return (self.draw(self.decode(mu, cond)) - x.float()).flatten(1).pow(2).mean(1)


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
    x = x.detach().requires_grad_(True)
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


class ContractiveAE(AE):
    cfg: ContractiveAEConfig

    def terms(self, x, cond, gen):
        out = super().terms(x, cond, gen)
        out["contraction"] = self.cfg.contraction * jacobian_norm2(lambda v: self.encode(v, cond)[0], x, gen)
        return out


class DenseVAE(AE):
    """AE + sampling + beta * KL. 'Dense': Bernoulli or Gaussian outputs (vaes.VAE is the token-grid one)."""

    cfg: DenseVAEConfig

    def code_size(self) -> int:
        return 2 * self.cfg.latent                                     # mu and logvar

    def encode(self, x, cond=None):
        stats, _ = super().encode(x, cond)
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar

    def terms(self, x, cond, gen):
        mu, logvar = self.encode(x, cond)
        mu, logvar = mu.float(), logvar.float()
        z = mu if gen is None else mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen, device=mu.device)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)   # Kingma and Welling, appendix B
        return {"nll": self.head.nll(self.decode(z, cond), x), "kl": self.cfg.beta * kl}

    @torch.no_grad()
    def metrics(self, batch, gen):
        out = super().metrics(batch, gen)
        out["kl"] /= max(self.cfg.beta, 1e-12)                          # the KL itself, not its weighted term
        out["elbo"] = -(out["nll"] + out["kl"])
        return out


class DenseCVAE(DenseVAE):
    cfg: DenseCVAEConfig

    def cond_dim(self) -> int:
        return sum(self.cfg.cond)

    def condition(self, cond, n):
        if cond is None:
            raise ValueError(f"a cvae needs a condition: {len(self.cfg.cond)} value(s) with sizes {self.cfg.cond}")
        cond = torch.as_tensor(cond, device=self.to_code.weight.device).long().view(-1, len(self.cfg.cond))
        c = torch.cat([F.one_hot(cond[:, k], n_k) for k, n_k in enumerate(self.cfg.cond)], 1).float()
        return c.expand(n, -1) if len(c) == 1 and n > 1 else c        # one condition for the whole batch


FAMILY = {"ae": (AEConfig, AE), "dae": (DAEConfig, DAE), "contractive_ae": (ContractiveAEConfig, ContractiveAE),
          "vae": (DenseVAEConfig, DenseVAE), "cvae": (DenseCVAEConfig, DenseCVAE)}
