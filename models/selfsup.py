"""Fine-tuning a denoiser on noisy images alone (`aeflow denoise adapt`): Neighbor2Neighbor (Huang et al.,
CVPR 2021). Two sub-images g1(y), g2(y) take, in every 2x2 cell, two different neighbouring pixels of the
same noisy image: their clean content is nearly equal and their noise independent, so g2(y) is a noisy
target for f(g1(y)); a regulariser keeps f consistent with its output on the whole image:

    L = |f(g1(y)) - g2(y)|^2 + gamma |f(g1(y)) - g2(y) - (g1(f(y)) - g2(f(y)))|^2       (f(y) not trained)

Camera noise is spatially correlated (demosaicing, JPEG), so neighbours share noise. Pixel-shuffle
down-sampling first (AP-BSN, Lee et al., CVPR 2022) splits y into pd^2 sub-images of every pd-th pixel, in
which neighbours are pd pixels apart in the photo and their noise nearly independent.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# in a 2x2 cell (0 1 / 2 3) the two neighbours of each position, horizontally and vertically
NEIGHBOURS = torch.tensor([[1, 2], [0, 3], [0, 3], [1, 2]])


def shuffle_down(y: torch.Tensor, pd: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * pd^2, C, H / pd, W / pd): the sub-images of every pd-th pixel."""
    if pd == 1:
        return y
    b, c, h, w = y.shape
    return F.pixel_unshuffle(y, pd).view(b, c, pd * pd, h // pd, w // pd).transpose(1, 2).reshape(-1, c, h // pd, w // pd)


def neighbour_picks(y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per 2x2 cell of y (B, C, H, W), a random position and a random neighbour of it: two (B, 1, 1, H/2, W/2)
    index tensors, the same for every channel."""
    b, _, h, w = y.shape
    first = torch.randint(0, 4, (b, 1, 1, h // 2, w // 2), generator=gen, device=y.device)
    which = torch.randint(0, 2, first.shape, generator=gen, device=y.device)
    second = NEIGHBOURS.to(y.device)[first, which]
    return first, second


def take(y: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """The pixel `pick` of every 2x2 cell: (B, C, H, W) -> (B, C, H/2, W/2)."""
    b, c, h, w = y.shape
    cells = F.pixel_unshuffle(y, 2).view(b, c, 4, h // 2, w // 2)
    return cells.gather(2, pick.expand(b, c, 1, h // 2, w // 2)).squeeze(2)


class Neighbor2Neighbor(nn.Module):
    """A denoiser trained by the Neighbor2Neighbor loss on pixel-shuffled noisy patches. The trainer sees
    `loss` and `metrics` (the held-out loss: no clean image to score against); `net` is what is saved."""

    def __init__(self, net: nn.Module, pd: int = 2, gamma: float = 2.0):
        super().__init__()
        self.net, self.pd, self.gamma = net, pd, gamma

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)

    def terms(self, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = shuffle_down(y, self.pd)
        first, second = neighbour_picks(y, gen)
        g1, g2 = take(y, first), take(y, second)
        out = self.net(g1).float()
        with torch.no_grad():
            whole = self.net(y).float()
        diff = out - g2.float()
        return diff.pow(2).mean(), (diff - (take(whole, first) - take(whole, second))).pow(2).mean()

    def loss(self, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        fit, consistency = self.terms(y, gen)
        return fit + self.gamma * consistency

    @torch.no_grad()
    def metrics(self, y: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        fit, consistency = self.terms(y, gen)
        loss = (fit + self.gamma * consistency).item()
        return {"loss": loss, "neg_loss": -loss, "fit": fit.item()}
