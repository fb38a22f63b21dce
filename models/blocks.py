"""Bodies of the autoencoder family: an encoder (input -> features) and its mirror, a decoder (features ->
output parameters), sized from the input's shape. `mlp` flattens any shape; `conv` convolves over every axis
after the first (channels): conv 2-D for (C, H, W), conv 1-D for (C, L).

Each half is an nn.Sequential, so a model's weights are `encoder.N.*` and `decoder.N.*` whatever the body
(the names the token-grid VAEs have always saved). The decoder begins with the activation: the model's
linear map from z (`from_z`) feeds it directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLPEncoder(nn.Sequential):
    """(B, *shape) -> (B, widths[-1]) through Linear + ReLU layers."""

    def __init__(self, shape: tuple[int, ...], widths: tuple[int, ...]):
        sizes = (math.prod(shape), *widths)
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        super().__init__(*layers)
        self.features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))                               # (B, *shape) -> (B, D) -> (B, w[-1])


class MLPDecoder(nn.Sequential):
    """(B, widths[-1]) -> (B, *shape): the encoder's mirror, ReLU before each Linear, none on the output."""

    def __init__(self, shape: tuple[int, ...], widths: tuple[int, ...]):
        sizes = (math.prod(shape), *widths)[::-1]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.ReLU(), nn.Linear(a, b)]
        super().__init__(*layers)
        self.shape = tuple(shape)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(h).view(len(h), *self.shape)


def _conv_sizes(shape: tuple[int, ...], widths: tuple[int, ...]):
    """(conv, transposed conv, padded spatial size, bottleneck (C, *spatial)) of a conv body over `shape`:
    the first width at full size, each next one halving every spatial axis, which is padded up to a
    multiple of 2^(len(widths) - 1) (and cropped back on the way out)."""
    if len(shape) not in (2, 3):
        raise ValueError(f"body 'conv' takes (channels, length) or (channels, height, width) inputs, got shape "
                         f"{tuple(shape)}")
    conv = (nn.Conv1d, nn.ConvTranspose1d) if len(shape) == 2 else (nn.Conv2d, nn.ConvTranspose2d)
    m = 2 ** (len(widths) - 1)
    padded = tuple(-(-s // m) * m for s in shape[1:])
    return conv, padded, (widths[-1], *(s // m for s in padded))


class ConvEncoder(nn.Sequential):
    """(B, C, *spatial) -> conv 3 at full size, then stride-2 convs, GELU after each -> (B, features)."""

    def __init__(self, shape: tuple[int, ...], widths: tuple[int, ...]):
        (conv, _), self.padded, bottom = _conv_sizes(shape, widths)
        layers = [conv(shape[0], widths[0], 3, padding=1), nn.GELU()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [conv(a, b, 4, stride=2, padding=1), nn.GELU()]
        super().__init__(*layers)
        self.shape, self.features = tuple(shape), math.prod(bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [p for s, full in zip(self.shape[:0:-1], self.padded[::-1]) for p in (0, full - s)]
        return super().forward(F.pad(x, pad)).flatten(1)                  # (B, w[-1] * prod(bottom))


class ConvDecoder(nn.Sequential):
    """(B, features) -> the bottleneck grid -> GELU + transposed stride-2 convs -> GELU + conv 3 -> (B, *shape)."""

    def __init__(self, shape: tuple[int, ...], widths: tuple[int, ...]):
        (conv, deconv), _, self.bottom = _conv_sizes(shape, widths)
        layers = []
        for a, b in zip(widths[::-1][:-1], widths[::-1][1:]):
            layers += [nn.GELU(), deconv(a, b, 4, stride=2, padding=1)]
        super().__init__(*layers, nn.GELU(), conv(widths[0], shape[0], 3, padding=1))
        self.shape = tuple(shape)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = super().forward(h.view(len(h), *self.bottom))
        return out[(...,) + tuple(slice(0, s) for s in self.shape[1:])]  # the padding cropped off


BODIES = {"mlp": (MLPEncoder, MLPDecoder), "conv": (ConvEncoder, ConvDecoder)}
