"""Output heads of the autoencoder family: what the decoder's output means, and how data goes in.

`inputs(x)` turns data into what the body reads, `params(out)` the body's output into the head's
parameters; `nll(params, x)` is the negative log-likelihood per sample, summed over every value of x
(pixels, channels, cells) and in nats: the VAE's KL is a sum over latent units too, so beta keeps its
meaning (a mean over pixels would silently scale beta by the pixel count). `draw(params, gen, temperature)`
turns parameters into data: the most likely data at temperature 0, else a sample drawn from `gen`.
`measure` names the reconstruction figure the validation reports (`score`: per sample).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Dense(nn.Module):
    """Real-valued data (B, *shape) read as it is; a subclass gives the likelihood."""

    measure = "mse"

    def __init__(self, cfg=None):
        super().__init__()

    @classmethod
    def layout(cls, cfg) -> tuple[int, ...]:
        return tuple(cfg.shape)                                            # what the body reads, per sample

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()

    def params(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def score(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error per sample (B,)."""
        return (x_hat.float() - x.float()).flatten(1).pow(2).mean(1)

    error = score                                                          # lower is better already


class Bernoulli(Dense):
    """Intensities in [0, 1] read as probabilities; parameters are logits."""

    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)

    def draw(self, logits: torch.Tensor, gen: torch.Generator | None = None, temperature: float = 0.0) -> torch.Tensor:
        if temperature <= 0:
            return torch.sigmoid(logits.float())
        return torch.bernoulli(torch.sigmoid(logits.float() / temperature), generator=gen)


class Gaussian(Dense):
    """Real values with unit variance: the NLL is half the squared error plus a constant."""

    def nll(self, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = (mean.float() - x.float()).flatten(1)
        return 0.5 * d.pow(2).sum(1) + 0.5 * d.shape[1] * math.log(2 * math.pi)

    def draw(self, mean: torch.Tensor, gen: torch.Generator | None = None, temperature: float = 0.0) -> torch.Tensor:
        if temperature <= 0:
            return mean.float()
        return mean.float() + temperature * torch.randn(mean.shape, generator=gen, device=mean.device)


def categorical(probs: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """One index drawn from each row of probs (..., K) by its inverse CDF: torch.multinomial's distribution
    at 1/30 of its time on CPU (7.8 ms -> 0.28 ms for 1000 x 259), where draw() calls it once a column.
    A zero-probability index is never drawn (right=True; u stays below the last cumulative sum)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=gen, device=cdf.device, dtype=cdf.dtype) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True)[..., 0]


class Categorical(nn.Module):
    """Token grids x (B, rows, cols) int64, one of `vocab` tokens per cell (level tiles, pitch tokens); the
    parameters are logits (B, V, rows, cols). Options (the model's config):

    dims     2: the body reads one-hot (V, rows, cols), convolving over the grid (levels); 1: (rows * V, cols),
             the rows (voices) folded into channels (music: a voice is not a spatial neighbour of the next).
    unique   tokens that occur exactly once per grid (Lode Runner's spawn): see `nll`.
    ar       each step also depends on the tokens of the `ar` steps before it (a small causal conv: `draw`).
    columns  a token is one of these whole columns (Mario's 259): the network models a row of column
             indices, while x and draws stay tile grids.
    """

    measure = "acc"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
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
            c, w0 = self.rows * self.vocab, cfg.widths[0]
            self.ar_past = nn.Conv1d(c, w0, cfg.ar)
            self.ar_now = nn.Conv1d(c, w0, 1)
            self.ar_out = nn.Sequential(nn.GELU(), nn.Conv1d(w0, w0, 1), nn.GELU(), nn.Conv1d(w0, c, 1))

    # ---- in and out of the body
    @classmethod
    def layout(cls, cfg) -> tuple[int, ...]:
        """What the body reads of one grid (see `dims`)."""
        rows, vocab = (1, len(cfg.columns)) if cfg.columns else (cfg.shape[0], cfg.vocab)
        return (rows * vocab, cfg.shape[1]) if cfg.dims == 1 else (vocab, rows, cfg.shape[1])

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Grids (B, rows, cols) -> one-hot in the body's layout."""
        t = self.to_tokens(x)
        h = F.one_hot(t, self.vocab).float()                                    # (B, rows, cols, V)
        if self.cfg.dims == 1:
            return h.permute(0, 1, 3, 2).reshape(len(t), self.rows * self.vocab, t.shape[-1])   # (B, rows*V, cols)
        return h.permute(0, 3, 1, 2)                                            # (B, V, rows, cols)

    def params(self, out: torch.Tensor) -> torch.Tensor:
        """The body's output -> logits (B, V, rows, cols)."""
        if self.cfg.dims == 1:
            return out.reshape(len(out), self.rows, self.vocab, out.shape[-1]).transpose(1, 2)
        return out

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

    # ---- likelihood
    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood in nats of grids x (B, rows, cols) under logits (B, V, rows, cols)
        (with `ar`, teacher-forced: each step given the true steps before it). Plain: a softmax over tokens
        per cell. With `unique` tokens, a grid holds each exactly once: its logit map is a softmax over the
        cells (where it is; a grid without it adds nothing), and every other cell is a softmax over the
        remaining tokens. So every decoded grid has exactly one of each (Lode Runner: one spawn), which a
        per-cell softmax almost never gives (argmax: none; drawn: several)."""
        t = self.to_tokens(x)
        logits = logits.float()
        if self.cfg.ar:
            logits = self._ar_logits(logits, t)
        if not self.cfg.unique:
            return F.cross_entropy(logits, t, reduction="none").flatten(1).sum(1)
        hit = self.is_unique[t]                                                 # (B, rows, cols)
        other = logits.masked_fill(self.is_unique[None, :, None, None], -1e9)  # the unique tokens left out
        free = int(torch.nonzero(~self.is_unique)[0])                           # any allowed target; masked below
        cells = F.cross_entropy(other, torch.where(hit, free, t), reduction="none") * ~hit
        out = cells.flatten(1).sum(1)
        for u in self.cfg.unique:
            where = (t == u).flatten(1)                                         # (B, rows * cols)
            here = where.any(1)
            pos = F.cross_entropy(logits[:, u].flatten(1), where.float().argmax(1), reduction="none")
            out = out + pos * here
        return out

    def score(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Share of the cells reconstructed exactly, per sample (B,)."""
        return (x_hat == x).float().flatten(1).mean(1)

    def error(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 1 - self.score(x_hat, x)                                         # share of the cells wrong

    # ---- drawing
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


HEADS = {"bernoulli": Bernoulli, "gaussian": Gaussian, "categorical": Categorical}
