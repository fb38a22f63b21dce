"""Latent-space procedures, written once for every bottleneck model: the family's autoencoders and VAEs
(models/autoencoders.py, models/vaes.py), the token-grid VAEs of levels and music among them. They need
only the latent contract: `cfg.latent`, `encode(x, cond) -> (mu, logvar or None)` and `decode(z, cond)`.
Models with skips instead of a bottleneck (skip_dae) have no such code: `check_bottleneck` says so in one line.
"""

from __future__ import annotations

import math

import torch


def check_bottleneck(net: torch.nn.Module, name: str) -> None:
    """A one-line refusal for a model without a latent code."""
    if not (hasattr(net, "encode") and hasattr(net, "decode") and hasattr(net.cfg, "latent")):
        raise ValueError(f"{name}: a {net.cfg.kind} has no bottleneck (its skips pass the image through), so it has "
                         "no latent space to map; use a family model, mario-vae, mario-columns, mario-cvae or a "
                         "music model")


@torch.no_grad()
def encode_all(net, x: torch.Tensor, cond: torch.Tensor | None = None, batch: int = 1024
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Posterior means (N, latent), and log-variances for VAE kinds, in batches."""
    mus, logvars = [], []
    for i in range(0, len(x), batch):
        mu, logvar = net.encode(x[i:i + batch], None if cond is None else cond[i:i + batch])
        mus.append(mu.float())
        logvars.append(None if logvar is None else logvar.float())
    return torch.cat(mus), None if logvars[0] is None else torch.cat(logvars)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return (1 - t) * a + t * b


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation along the last axis (White 2016): under a Gaussian prior the straight line's
    middle has an atypically small norm; the great circle keeps prior-typical norms. Rows of (K, latent) are
    interpolated each on its own circle (long items, window by window)."""
    cos = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(omega)
    curved = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin.clamp_min(1e-12)
    return torch.where(omega.abs() < 1e-4, lerp(a, b, t), curved)


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int, spherical: bool = False) -> torch.Tensor:
    """`steps` points from a to b inclusive: (steps, *a.shape)."""
    way = slerp if spherical else lerp
    return torch.stack([way(a, b, float(t)) for t in torch.linspace(0, 1, steps)])


def traverse(center: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """One unit at a time set to each value, the others held at `center` (latent,): values (steps,) for every
    unit alike, or (len(dims), steps) one row per unit -> (len(dims), steps, latent). Rows are units, columns
    values (Higgins et al. 2017's traversal figure)."""
    values = values.expand(len(dims), -1)
    z = center.expand(len(dims), values.shape[1], -1).clone()
    for row, d in enumerate(dims):
        z[row, :, d] = values[row]
    return z


def lattice(center: torch.Tensor, dims: tuple[int, int], values_x: torch.Tensor, values_y: torch.Tensor
            ) -> torch.Tensor:
    """The regular 2-D lattice of the "manifold" figure (Kingma and Welling 2014, fig. 4): units dims[0]
    (columns) and dims[1] (rows, top = largest) swept, the others held at `center`: (rows, cols, latent)."""
    z = center.expand(len(values_y), len(values_x), -1).clone()
    z[:, :, dims[0]] = values_x[None, :]
    z[:, :, dims[1]] = values_y.flip(0)[:, None]
    return z


def gaussian_quantiles(n: int, spread: float = 1.0, tail: float = 0.05) -> torch.Tensor:
    """n evenly spaced probabilities in [tail, 1 - tail] mapped through the standard normal's inverse CDF: a
    VAE's lattice covers the prior's mass evenly instead of wasting cells on its far tails."""
    p = torch.linspace(tail, 1 - tail, n, dtype=torch.float64)
    return (spread * math.sqrt(2) * torch.erfinv(2 * p - 1)).float()


def most_active(mu: torch.Tensor, k: int = 2) -> list[int]:
    """The k units whose posterior mean varies most over the data (the rest are near the prior for a VAE)."""
    return mu.var(0).argsort(descending=True)[:k].tolist()


@torch.no_grad()
def decoder_sensitivity(net, cond: torch.Tensor | None = None, delta: float = 2.0) -> torch.Tensor:
    """(latent,) how much the decoder's output changes when one unit goes from -delta to +delta at the prior's
    centre: the units a VAE uses, found without data (collapsed units change nothing)."""
    latent = net.cfg.latent
    z = torch.zeros(2 * latent, latent)
    idx = torch.arange(latent)
    z[idx, idx], z[latent + idx, idx] = -delta, delta
    out = net.decode(z, None if cond is None else cond.expand(2 * latent, -1)).float()
    return (out[latent:] - out[:latent]).abs().flatten(1).mean(1)


def latent_walk(n_windows: int, latent: int, gen: torch.Generator, rho: float = 0.7,
                spread: float = 1.0) -> torch.Tensor:
    """A smooth walk through the prior for content longer than one window: z_0 ~ N(0, spread^2 I), then
    walk_step after walk_step (a stationary AR(1): every z_k is again N(0, spread^2 I), so each window looks
    like a sample, and neighbours are correlated). (n_windows, latent), drawn from `gen`."""
    z = [spread * torch.randn(1, latent, generator=gen)]
    for _ in range(n_windows - 1):
        z.append(walk_step(z[-1], 1, gen, rho, spread))
    return torch.cat(z)


def walk_step(z: torch.Tensor, n: int, gen: torch.Generator, rho: float = 0.7, spread: float = 1.0) -> torch.Tensor:
    """n candidate next points (n, latent) after z (1, latent): rho z + spread sqrt(1 - rho^2) eps, which
    keeps N(0, spread^2 I) as it is (`spread`: VAE.sample)."""
    return rho * z + spread * math.sqrt(1 - rho ** 2) * torch.randn(n, z.shape[-1], generator=gen)


def decode_windows(net, z: torch.Tensor, gen: torch.Generator | None, cond: torch.Tensor | None = None,
                   temperature: float = 0.0) -> torch.Tensor:
    """Content longer than one window: the windows decoded from latent points z (K, latent), joined along the
    last axis into one (rows, K * cols); or from (L, K, latent), L such at once (cond: (L * K, ...)). A model
    with an `ar` head draws each window after the one before it, so it continues across the seam."""
    one = z.dim() == 2
    z = z[None] if one else z
    n, k = z.shape[:2]
    logits = net.decode(z.flatten(0, 1), cond)
    logits = logits.view(n, k, *logits.shape[1:])
    if not net.cfg.ar:
        wins = net.draw(logits.flatten(0, 1), gen, temperature)
    else:
        wins = [net.draw(logits[:, 0], gen, temperature)]
        for j in range(1, k):
            wins.append(net.draw(logits[:, j], gen, temperature, wins[-1]))
        wins = torch.stack(wins, 1)
    rows, cols = wins.shape[-2:]
    joined = wins.reshape(n, k, rows, cols).permute(0, 2, 1, 3).reshape(n, rows, k * cols)
    return joined[0] if one else joined


def project_2d(codes: torch.Tensor) -> torch.Tensor:
    """The first two principal axes of the codes (N, 2): the torch-only projection (t-SNE and UMAP are in
    flows/latent.py, with their packages)."""
    centred = codes - codes.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T
