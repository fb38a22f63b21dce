"""Training patches: random square crops with the 8 flips/rotations, drawn from a packed image set."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PatchSampler:
    """Images of any sizes packed into one flat (C, total_pixels) tensor, so that a batch of random
    crops is one gather, on the CPU or the GPU alike. Every draw comes from the caller's generator."""

    def __init__(self, images: list[torch.Tensor], patch: int, batch_size: int, device: str | torch.device = "cpu"):
        if not images:
            raise ValueError("no training images")
        self.patch, self.batch_size = patch, batch_size
        flats, offsets, heights, widths = [], [], [], []
        offset = 0
        for img in images:                                    # (C, H, W) float in [0, 1]
            h, w = img.shape[-2:]
            if h < patch or w < patch:                        # small images: stretch the border up to one patch
                img = F.pad(img[None], (0, max(0, patch - w), 0, max(0, patch - h)), mode="replicate")[0]
                h, w = img.shape[-2:]
            flats.append(img.reshape(img.shape[0], -1))
            offsets.append(offset), heights.append(h), widths.append(w)
            offset += h * w
        self.data = torch.cat(flats, 1).to(device=device, dtype=torch.float16)   # half the memory; 11-bit mantissa
        self.offsets = torch.tensor(offsets, device=device)
        self.heights = torch.tensor(heights, device=device)
        self.widths = torch.tensor(widths, device=device)
        # pick images in proportion to the number of crops they hold
        self.weights = ((self.heights - patch + 1) * (self.widths - patch + 1)).double()
        self.arange = torch.arange(patch, device=device)

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __call__(self, gen: torch.Generator) -> torch.Tensor:
        """One batch (B, C, P, P) float32."""
        b, p = self.batch_size, self.patch
        n = torch.multinomial(self.weights, b, replacement=True, generator=gen)
        y0 = (torch.rand(b, generator=gen, device=self.device) * (self.heights[n] - p + 1)).long()
        x0 = (torch.rand(b, generator=gen, device=self.device) * (self.widths[n] - p + 1)).long()
        rows = (y0[:, None] + self.arange)[:, :, None]                       # (B, P, 1)
        cols = (x0[:, None] + self.arange)[:, None, :]                       # (B, 1, P)
        idx = self.offsets[n, None, None] + rows * self.widths[n, None, None] + cols   # (B, P, P)
        x = self.data[:, idx].permute(1, 0, 2, 3).float()                    # (C, B, P, P) -> (B, C, P, P)
        flips = torch.rand(3, b, 1, 1, 1, generator=gen, device=self.device) < 0.5
        x = torch.where(flips[0], x.flip(-1), x)
        x = torch.where(flips[1], x.flip(-2), x)
        return torch.where(flips[2], x.transpose(-1, -2), x)                 # 8 dihedral variants


def center_crops(images: list[torch.Tensor], size: int, limit: int = 32) -> torch.Tensor:
    """A fixed validation batch: up to `limit` non-overlapping `size` crops from held-out images."""
    crops = []
    for img in images:
        h, w = img.shape[-2:]
        for top in range(0, h - size + 1, size):
            for left in range(0, w - size + 1, size):
                crops.append(img[:, top:top + size, left:left + size])
    if not crops:
        raise ValueError(f"validation images are smaller than the {size}px validation crop")
    step = max(1, len(crops) // limit)
    return torch.stack(crops[::step][:limit]).float()
