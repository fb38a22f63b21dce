"""Variational autoencoders on the family's one design (models/autoencoders.py AE): any body and head.

    vae   AE + sampling + beta * KL: the encoder gives mu and logvar, z = mu + sigma * eps, and the loss adds
          beta * KL(q(z|x) || N(0, I)) (Kingma and Welling, 2014). beta is a config value: beta > 1 is the
          beta-VAE (Higgins et al., ICLR 2017), never a class.
    cvae  the encoder and decoder also see a condition c (Sohn et al., NeurIPS 2015): `condition` only.

The same classes are the token-grid VAEs of the level and music jobs (head `categorical`: a batch is x
(B, rows, cols) int64 tokens, or `(x, cond)` with cond (B, K) int64 for a cvae; its dims / unique / ar /
columns options are models/likelihoods.py's) and the image and vector VAEs of the family (bernoulli or
gaussian heads over mlp or conv bodies).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from models.autoencoders import AE, AEConfig


class VAEConfig(AEConfig):
    kind: Literal["vae"] = "vae"
    beta: float = 1.0                            # weight of the KL term; 1 = the plain VAE


class CVAEConfig(VAEConfig):
    kind: Literal["cvae"] = "cvae"
    cond: tuple[int, ...]                        # cardinality of each categorical condition variable


class VAE(AE):
    """AE + sampling + beta * KL."""

    cfg: VAEConfig

    def code_size(self) -> int:
        return 2 * self.cfg.latent                                     # mu and logvar

    def encode(self, x, cond=None):
        stats, _ = super().encode(x, cond)
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar

    def terms(self, x, cond, gen):
        """Per-sample reconstruction NLL and KL in nats (z = mu when gen is None)."""
        mu, logvar = self.encode(x, cond)
        mu, logvar = mu.float(), logvar.float()
        z = mu if gen is None else mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen, device=mu.device)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)   # KL(q(z|x) || N(0, I)), Kingma & Welling App. B
        return {"nll": self.head.nll(self.decode(z, cond), x), "kl": kl}

    def weights(self):
        return {"kl": self.cfg.beta}

    def bounds(self, terms):
        return {"elbo": -(terms["nll"] + terms["kl"])}                 # nats per example, higher is better

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator, cond: torch.Tensor | None = None, z: torch.Tensor | None = None,
               temperature: float = 1.0, greedy: bool = True, spread: float = 1.0) -> torch.Tensor:
        """n examples decoded from z ~ N(0, spread^2 I) (drawn from `gen`) or the given z. greedy: the most
        likely data (per cell for tokens); otherwise drawn from the head at `temperature`. spread < 1 keeps z
        nearer the prior's centre (the truncation trick): safer, less varied samples."""
        device = next(self.parameters()).device
        if z is None:
            z = spread * torch.randn(n, self.cfg.latent, generator=gen, device=device)
        params = self.decode(z.to(device), cond).float()
        return self.draw(params, gen, 0.0 if greedy else temperature)


class CVAE(VAE):
    """A VAE whose encoder and decoder both see the condition (one-hot per variable, concatenated)."""

    cfg: CVAEConfig

    def cond_dim(self) -> int:
        return sum(self.cfg.cond)

    def one_hot(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, K) category indices -> (B, sum(cond)) concatenated one-hots. A floating-point (B, sum(cond))
        tensor is taken as already given weights per variable, a soft condition: (1 - w, w) decodes between
        two categories (game blending); a one-hot row gives exactly what its index gives."""
        if cond is None:
            raise ValueError(f"a cvae needs a condition: {len(self.cfg.cond)} values with sizes {self.cfg.cond}")
        if torch.is_tensor(cond) and cond.is_floating_point():
            if cond.dim() != 2 or cond.shape[1] != sum(self.cfg.cond):
                raise ValueError(f"a soft condition is (B, {sum(self.cfg.cond)}) weights (one block per variable of "
                                 f"sizes {self.cfg.cond}); got {tuple(cond.shape)}")
            return cond.to(next(self.parameters()).device, torch.float32)
        cond = torch.as_tensor(cond, device=next(self.parameters()).device).long().view(-1, len(self.cfg.cond))
        return torch.cat([F.one_hot(cond[:, k], n) for k, n in enumerate(self.cfg.cond)], 1).float()

    def condition(self, cond, n):
        c = self.one_hot(cond)
        return c.expand(n, -1) if len(c) == 1 and n > 1 else c     # one condition for the whole batch
