"""Bodies for the autoencoder family: an encoder (input -> features) and its mirror (features -> output
parameters), sized from the input's shape. `mlp` flattens any shape; `conv` is for (C, H, W) images; `conv1d` for (C, T) windows of a time series."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLPBody(nn.Module):
    """(B, *shape) -> (B, widths[-1]) through Linear + ReLU layers; `decode` mirrors it back to (B, *shape)."""

    def __init__(self, shape: tuple[int, ...], widths: tuple[int, ...]):
        super().__init__()
        self.shape, self.features = tuple(shape), widths[-1]
        sizes = (math.prod(shape), *widths)
        enc = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        dec = []
        for a, b in zip(sizes[::-1][:-1], sizes[::-1][1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec[:-1])     # no ReLU on the output

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))                                  # (B, *shape) -> (B, D) -> (B, w[-1])

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h).view(len(h), *self.shape)


class ConvBody(nn.Module):
    """(B, C, H, W) -> stride-2 convs (one per width) -> (B, features); `decode` mirrors it with transposed
    convs. H and W are padded up to a multiple of 2^len(widths) and the output cropped back."""

    def __init__(self, shape: tuple[int, ...], widths: tuple[int, ...]):
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"body 'conv' takes (channels, height, width) inputs, got shape {tuple(shape)}")
        self.shape = tuple(shape)
        c, h, w = shape
        m = 2 ** len(widths)
        self.padded = (-(-h // m) * m, -(-w // m) * m)
        self.bottom = (widths[-1], self.padded[0] // m, self.padded[1] // m)
        self.features = math.prod(self.bottom)
        chans = (c, *widths)
        enc, dec = [], []
        for a, b in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        for a, b in zip(chans[::-1][:-1], chans[::-1][1:]):
            dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec[:-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.shape[1:]
        x = F.pad(x, (0, self.padded[1] - w, 0, self.padded[0] - h))
        return self.encoder(x).flatten(1)                                  # (B, w[-1] * h/m * w/m)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        out = self.decoder(h.view(len(h), *self.bottom))
        return out[..., :self.shape[1], :self.shape[2]]


class Conv1dBody(nn.Module):
    """(B, C, T) -> stride-2 Conv1d layers (one per width) -> (B, features); `decode` mirrors it with
    ConvTranspose1d. T is padded up to a multiple of 2^len(widths) and the output cropped back."""

    def __init__(self, shape: tuple[int, ...], widths: tuple[int, ...]):
        super().__init__()
        if len(shape) != 2:
            raise ValueError(f"body 'conv1d' takes (channels, length) inputs, got shape {tuple(shape)}")
        self.shape = tuple(shape)
        c, t = shape
        m = 2 ** len(widths)
        self.padded = -(-t // m) * m
        self.bottom = (widths[-1], self.padded // m)
        self.features = math.prod(self.bottom)
        chans = (c, *widths)
        enc, dec = [], []
        for a, b in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv1d(a, b, 4, stride=2, padding=1), nn.ReLU()]        # halves T exactly
        for a, b in zip(chans[::-1][:-1], chans[::-1][1:]):
            dec += [nn.ConvTranspose1d(a, b, 4, stride=2, padding=1), nn.ReLU()]  # doubles T exactly
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec[:-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, self.padded - self.shape[1]))
        return self.encoder(x).flatten(1)                                  # (B, w[-1] * T/m)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h.view(len(h), *self.bottom))[..., :self.shape[1]]   # (B, C, T)


BODIES = {"mlp": MLPBody, "conv": ConvBody, "conv1d": Conv1dBody}
