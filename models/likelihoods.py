"""Output heads of the autoencoder family: what the decoder's output parameters mean.

`nll` is the negative log-likelihood per sample, summed over every value of x (pixels, channels) and in
nats: the VAE's KL is a sum over latent units too, so beta keeps its meaning (a mean over pixels would
silently scale beta by the pixel count). `draw` turns parameters into data: the mean at temperature 0,
else a sample drawn from `gen`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Bernoulli:
    """Intensities in [0, 1] read as probabilities; parameters are logits."""

    @staticmethod
    def nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)

    @staticmethod
    def draw(logits: torch.Tensor, gen: torch.Generator | None = None, temperature: float = 0.0) -> torch.Tensor:
        p = torch.sigmoid(logits.float())
        if temperature <= 0:
            return p
        return torch.bernoulli(torch.sigmoid(logits.float() / temperature), generator=gen)


class Gaussian:
    """Real values with unit variance: the NLL is half the squared error plus a constant."""

    @staticmethod
    def nll(mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = (mean.float() - x.float()).flatten(1)
        return 0.5 * d.pow(2).sum(1) + 0.5 * d.shape[1] * math.log(2 * math.pi)

    @staticmethod
    def draw(mean: torch.Tensor, gen: torch.Generator | None = None, temperature: float = 0.0) -> torch.Tensor:
        if temperature <= 0:
            return mean.float()
        return mean.float() + temperature * torch.randn(mean.shape, generator=gen, device=mean.device)


HEADS = {"bernoulli": Bernoulli, "gaussian": Gaussian}
