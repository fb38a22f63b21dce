"""Convolutional VAEs over token grids with a categorical decoder: game levels (rows x cols of tiles) and
piano rolls (voices x steps of pitch tokens). β is a config value (β-VAE, Higgins et al. 2017); the
conditional VAE (Sohn et al. 2015) only overrides `condition`: its one-hot condition variables.

A batch is `x` (B, rows, cols) int64 tokens, or `(x, cond)` with cond (B, K) int64 for a `cvae`.
dims=2 convolves over the grid (levels); dims=1 convolves over the last axis only, the rows (voices)
folded into channels (music: a voice is not a spatial neighbour of the next). With `ar` > 0 a small causal
conv head makes each step depend on the steps drawn before it as well as on z (VAE.draw). With `columns`
the network models a grid as a sequence of whole columns, each one of a fixed vocabulary (Mario's 259):
the grid API (encode, sample, reconstruct, draw) still takes and gives tile grids.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator, model_serializer


class VAEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["vae"] = "vae"
    vocab: int                                   # categories per cell (tiles, pitch tokens)
    shape: tuple[int, int]                       # (rows, cols); music: (voices, steps)
    dims: Literal[1, 2] = 2                      # 2: conv over the grid; 1: conv over cols, rows as channels
    widths: tuple[int, ...] = (64, 128, 256)     # first at full size, then each halves the conv axes
    latent: int = 32
    beta: float = 1.0                            # weight of the KL term; 1 = the plain VAE
    unique: tuple[int, ...] = ()                 # tokens that occur once per grid (Lode Runner's spawn): see VAE.nll
    ar: int = 0                                  # dims=1: each step also sees the `ar` steps before it (VAE.draw)
    columns: tuple[tuple[int, ...], ...] = ()    # dims=1: a token is one of these whole columns (rows tiles each)

    @field_validator("vocab", "latent")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("ar")
    @classmethod
    def _steps(cls, v):
        if v < 0:
            raise ValueError(f"must be >= 0 steps, got {v}")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # `unique`, `ar`, `columns` are left out while unused: configs (and stage keys) from before them stay the same
        out = handler(self)
        for key in ("unique", "ar", "columns"):
            if not out.get(key):
                out.pop(key, None)
        return out


class CVAEConfig(VAEConfig):
    kind: Literal["cvae"] = "cvae"
    cond: tuple[int, ...]                        # cardinality of each categorical condition variable


def categorical(probs: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """One index drawn from each row of probs (..., K) by its inverse CDF: torch.multinomial's distribution
    at 1/30 of its time on CPU (7.8 ms -> 0.28 ms for 1000 x 259), where draw() calls it once a column.
    A zero-probability index is never drawn (right=True; u stays below the last cumulative sum)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=gen, device=cdf.device, dtype=cdf.dtype) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True)[..., 0]


def _conv(dims: int):
    return (nn.Conv1d, nn.ConvTranspose1d) if dims == 1 else (nn.Conv2d, nn.ConvTranspose2d)


class VAE(nn.Module):
    """One-hot grid -> conv encoder -> (mu, logvar) -> z -> linear + transposed convs -> logits per cell."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        conv, deconv = _conv(cfg.dims)
        rows, cols = cfg.shape
        if cfg.columns:
            table = torch.tensor(cfg.columns, dtype=torch.long)                  # (N, rows)
            if cfg.dims != 1 or cfg.unique or table.shape[1] != rows or not 0 <= int(table.min()) <= int(
                    table.max()) < cfg.vocab:
                raise ValueError(f"columns: needs dims=1, no unique tokens and columns of {rows} tokens in "
                                 f"0..{cfg.vocab - 1}")
            self.register_buffer("column_table", table, persistent=False)      # in the config, not the weights
        # what the network models: (rows, vocab) cells, or one row of column tokens
        self.rows, self.vocab = (1, len(cfg.columns)) if cfg.columns else (rows, cfg.vocab)
        self.m = 2 ** (len(cfg.widths) - 1)                       # the conv axes are padded to this multiple
        spatial = (cols,) if cfg.dims == 1 else (rows, cols)
        self.padded = tuple(-(-s // self.m) * self.m for s in spatial)
        self.bottom = tuple(s // self.m for s in self.padded)       # conv grid at the bottleneck
        c_in = self.vocab * (self.rows if cfg.dims == 1 else 1)
        w = cfg.widths
        enc = [conv(c_in, w[0], 3, padding=1), nn.GELU()]
        for a, b in zip(w[:-1], w[1:]):
            enc += [conv(a, b, 4, stride=2, padding=1), nn.GELU()]
        self.encoder = nn.Sequential(*enc)
        flat = w[-1] * math.prod(self.bottom)
        self.to_stats = nn.Linear(flat + self.cond_dim(), 2 * cfg.latent)
        self.from_z = nn.Linear(cfg.latent + self.cond_dim(), flat)
        dec = []
        for a, b in zip(w[::-1][:-1], w[::-1][1:]):
            dec += [nn.GELU(), deconv(a, b, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec, nn.GELU(), conv(w[0], c_in, 3, padding=1))
        if any(not 0 <= u < cfg.vocab for u in cfg.unique) or len(cfg.unique) >= cfg.vocab:
            raise ValueError(f"unique tokens {cfg.unique} must be distinct from at least one other token in "
                             f"0..{cfg.vocab - 1}")
        unique = torch.zeros(self.vocab, dtype=torch.bool)
        unique[list(cfg.unique)] = True
        self.register_buffer("is_unique", unique, persistent=False)            # (V,)
        if cfg.ar:
            if cfg.dims != 1 or cfg.unique:
                raise ValueError(f"ar={cfg.ar}: an autoregressive head needs dims=1 and no unique tokens")
            # A small causal conv (PixelVAE-style, Gulrajani et al. 2017): a cell's logits also depend on the
            # tokens of the last `ar` steps of every voice. Cells drawn independently given z break runs of
            # short notes apart (two 16ths become a 16th and a longer note); a short receptive field leaves the
            # phrase to z. Over level columns it keeps pipes and platforms whole across columns.
            self.ar_past = conv(c_in, w[0], cfg.ar)
            self.ar_now = conv(c_in, w[0], 1)
            self.ar_out = nn.Sequential(nn.GELU(), conv(w[0], w[0], 1), nn.GELU(), conv(w[0], c_in, 1))

    def cond_dim(self) -> int:
        return 0

    def condition(self, cond: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """What the encoder and decoder see of `cond` for a batch of n: nothing (a cvae overrides this)."""
        return None

    # ---- the two halves
    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode(self.to_tokens(x), self.condition(cond, len(x)))

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self._decode(z, self.condition(cond, len(z)))

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Grids (B, rows, cols) -> what the network models: the grids, or with `columns` (B, 1, cols) the
        index of each column in the vocabulary (the nearest by Hamming distance for a column not in it)."""
        if not self.cfg.columns:
            return x.long()
        v = self.cfg.vocab
        cols = F.one_hot(x.long().transpose(1, 2), v).flatten(2).float()        # (B, cols, rows*V)
        table = F.one_hot(self.column_table, v).flatten(1).float()              # (N, rows*V)
        return (cols @ table.T).argmax(-1)[:, None, :]                          # most tiles in common

    def to_grid(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of to_tokens (exact for columns in the vocabulary)."""
        return self.column_table[t[:, 0]].transpose(1, 2) if self.cfg.columns else t

    def _encode(self, t: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens t (to_tokens' output) and the condition -> (mu, logvar)."""
        rows, cols = self.rows, self.cfg.shape[1]
        h = F.one_hot(t, self.vocab).float()                       # (B, rows, cols, V)
        if self.cfg.dims == 1:
            h = h.permute(0, 1, 3, 2).reshape(len(t), rows * self.vocab, cols)   # (B, rows*V, cols)
            h = F.pad(h, (0, self.padded[0] - cols))
        else:
            h = h.permute(0, 3, 1, 2)                              # (B, V, rows, cols)
            h = F.pad(h, (0, self.padded[1] - cols, 0, self.padded[0] - rows))
        h = self.encoder(h).flatten(1)                             # (B, w[-1] * prod(bottom))
        if c is not None:
            h = torch.cat([h, c.to(h.dtype)], 1)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)
        return mu, logvar

    def _decode(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        rows, cols = self.rows, self.cfg.shape[1]
        if c is not None:
            z = torch.cat([z, c.to(z.dtype)], 1)
        h = self.from_z(z).view(len(z), self.cfg.widths[-1], *self.bottom)
        h = self.decoder(h)
        if self.cfg.dims == 1:
            h = h[..., :cols].reshape(len(z), rows, self.vocab, cols)         # (B, rows, V, cols)
            return h.transpose(1, 2)                                          # (B, V, rows, cols)
        return h[..., :rows, :cols]                                           # (B, V, rows, cols)

    # ---- training
    @staticmethod
    def _split(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return batch if isinstance(batch, (tuple, list)) else (batch, None)

    def terms(self, x: torch.Tensor, cond: torch.Tensor | None, gen: torch.Generator | None):
        """Per-sample reconstruction cross-entropy and KL in nats, and the logits (z = mu when gen is None)."""
        t = self.to_tokens(x)                                       # once: encoder input and targets
        mu, logvar = self._encode(t, self.condition(cond, len(x)))
        mu, logvar = mu.float(), logvar.float()
        z = mu if gen is None else mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen, device=mu.device)
        logits = self.decode(z, cond).float()
        if self.cfg.ar:
            logits = self._ar_logits(logits, t)                       # teacher forcing: the true steps before each
        recon = self.nll(logits, t)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)   # KL(q(z|x) || N(0, I)), Kingma & Welling App. B
        return recon, kl, logits

    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood in nats of tokens x (B, rows, cols) under logits (B, V, rows, cols).
        Plain: a softmax over tokens per cell. With `unique` tokens, a grid holds each exactly once: its logit
        map is a softmax over the cells (where it is; a grid without it adds nothing), and every other cell is
        a softmax over the remaining tokens. So every decoded grid has exactly one of each (Lode Runner: one
        spawn), which a per-cell softmax almost never gives (argmax: none; drawn: several)."""
        if not self.cfg.unique:
            return F.cross_entropy(logits, x, reduction="none").flatten(1).sum(1)
        hit = self.is_unique[x]                                                 # (B, rows, cols)
        other = logits.masked_fill(self.is_unique[None, :, None, None], -1e9)  # the unique tokens left out
        free = int(torch.nonzero(~self.is_unique)[0])                           # any allowed target; masked below
        cells = F.cross_entropy(other, torch.where(hit, free, x), reduction="none") * ~hit
        out = cells.flatten(1).sum(1)
        for u in self.cfg.unique:
            where = (x == u).flatten(1)                                         # (B, rows * cols)
            here = where.any(1)
            pos = F.cross_entropy(logits[:, u].flatten(1), where.float().argmax(1), reduction="none")
            out = out + pos * here
        return out

    def tokens(self, logits: torch.Tensor, gen: torch.Generator | None = None, temperature: float = 0.0
               ) -> torch.Tensor:
        """Logits (B, V, rows, cols) -> tokens (B, rows, cols): the most likely token per cell (temperature 0) or
        each drawn from softmax(logits / temperature) (from `gen`); `unique` tokens are placed once each, at
        their most likely (or a drawn) cell."""
        logits = logits.float()
        other = logits.masked_fill(self.is_unique[None, :, None, None], -1e9) if self.cfg.unique else logits
        if temperature <= 0:
            out = other.argmax(1)
        else:
            probs = F.softmax(other / temperature, dim=1).movedim(1, -1)         # (B, rows, cols, V)
            out = categorical(probs, gen)
        flat = out.flatten(1)                                                   # (B, rows * cols), a view
        for u in self.cfg.unique:
            where = logits[:, u].flatten(1)                                     # (B, rows * cols)
            if temperature <= 0:
                idx = where.argmax(1, keepdim=True)
            else:
                idx = categorical(F.softmax(where / temperature, dim=1), gen)[:, None]
            flat.scatter_(1, idx, u)
        return out

    def _ar_logits(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """decode's logits (B, V, rows, cols) corrected by the tokens x (B, rows, cols) of the `ar` steps before
        each step (x at a step itself and after it is never read)."""
        b, v, rows, cols = logits.shape
        flat = logits.transpose(1, 2).reshape(b, rows * v, cols)
        past = F.one_hot(x.long(), v).to(flat.dtype).permute(0, 1, 3, 2).reshape(b, rows * v, cols)
        past = F.pad(past, (self.cfg.ar, -1))                     # shifted right by one: step t sees t-ar .. t-1
        out = flat + self.ar_out(self.ar_past(past) + self.ar_now(flat))
        return out.view(b, rows, v, -1).transpose(1, 2)

    def draw(self, logits: torch.Tensor, gen: torch.Generator | None = None, temperature: float = 0.0,
             prefix: torch.Tensor | None = None) -> torch.Tensor:
        """decode's logits -> grids (B, rows, cols): `tokens` per cell, or with `ar` step by step, each step given
        those drawn before it (the most likely token at temperature 0). `prefix` (B, rows, p): the grid just
        before this one (the previous window of a long level), which the first `ar` steps then follow."""
        if not self.cfg.ar:
            return self.to_grid(self.tokens(logits, gen, temperature))
        ar, (b, v, rows, cols) = self.cfg.ar, logits.shape
        p = 0 if prefix is None else min(prefix.shape[-1], ar)
        x = torch.zeros(b, rows, p + cols, dtype=torch.long, device=logits.device)
        if p:
            x[..., :p] = self.to_tokens(prefix[..., -p:].to(x.device))
        # _ar_logits one step at a time, its convs over one-hot inputs taken apart: ar_now over all steps at
        # once (it reads only the logits), ar_past as a sum of weight rows picked by the last `ar` tokens
        flat = logits.float().transpose(1, 2).reshape(b, rows * v, cols)
        now = self.ar_now(flat) + self.ar_past.bias[:, None]        # (B, w0, cols)
        taps = self.ar_past.weight.permute(2, 1, 0)                 # (ar, rows * V, w0): tap k, input channel
        voice = torch.arange(rows, device=x.device) * v             # a voice's first channel
        for t in range(cols):
            h = now[..., t]
            for k in range(max(0, ar - p - t), ar):                 # tap k reads step t - ar + k (if any)
                h = h + taps[k][x[:, :, p + t - ar + k] + voice].sum(1)
            step = flat[..., t] + self.ar_out(h[..., None])[..., 0]  # (B, rows * V)
            x[..., p + t] = self.tokens(step.view(b, rows, v, 1).transpose(1, 2), gen, temperature)[..., 0]
        return self.to_grid(x[..., p:])

    def loss(self, batch, gen: torch.Generator) -> torch.Tensor:
        x, cond = self._split(batch)
        recon, kl, _ = self.terms(x, cond, gen)
        return (recon + self.cfg.beta * kl).mean()

    @torch.no_grad()
    def metrics(self, batch, gen: torch.Generator, chunk: int = 1024) -> dict[str, float]:
        """Validation: loss (β-weighted, sampled z), elbo (nats per window, higher is better), kl, and acc:
        the share of cells that decode(mu) reconstructs exactly."""
        x, cond = self._split(batch)
        sums = {"loss": 0.0, "elbo": 0.0, "kl": 0.0, "acc": 0.0}
        for i in range(0, len(x), chunk):
            xb, cb = x[i:i + chunk], None if cond is None else cond[i:i + chunk]
            recon, kl, _ = self.terms(xb, cb, gen)
            sums["loss"] += (recon + self.cfg.beta * kl).sum().item()
            sums["elbo"] -= (recon + kl).sum().item()
            sums["kl"] += kl.sum().item()
            sums["acc"] += (self.reconstruct(xb, cb) == xb).float().flatten(1).mean(1).sum().item()
        return {k: v / len(x) for k, v in sums.items()}

    # ---- use
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, rows, cols) -> the most likely tokens decoded from mu."""
        mu, _ = self.encode(x, cond)
        return self.draw(self.decode(mu, cond))

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator, cond: torch.Tensor | None = None, z: torch.Tensor | None = None,
               temperature: float = 1.0, greedy: bool = True, spread: float = 1.0) -> torch.Tensor:
        """n grids (n, rows, cols) decoded from z ~ N(0, spread^2 I) (drawn from `gen`) or the given z. greedy:
        the most likely token per cell; otherwise each cell is drawn from softmax(logits / temperature).
        spread < 1 keeps z nearer the prior's centre (the truncation trick): safer, less varied samples."""
        device = next(self.parameters()).device
        if z is None:
            z = spread * torch.randn(n, self.cfg.latent, generator=gen, device=device)
        logits = self.decode(z.to(device), cond).float()           # (n, V, rows, cols)
        return self.draw(logits, gen, 0.0 if greedy else temperature)


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
