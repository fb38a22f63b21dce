"""A generic, resumable training loop. It knows nothing about autoencoders: it calls `model.loss(x, gen)`
to train and `model.metrics(x, gen)` to validate, and keeps the weights with the best `select` metric.

Determinism: every random draw (patches, flips, noise) comes from one generator whose state is part
of the checkpoint, the learning rate is a pure function of the step, and checkpoints are taken at
epoch ends; so a run killed at any point and restarted ends with the same weights as one that was not
(on the CPU; CUDA kernels are not bit-reproducible).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from models.checkpoints import load_training_state, save_training_state


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int | None = None          # optimiser steps; or
    epochs: int | None = None         # epochs of `epoch_steps` steps; or
    minutes: float | None = None      # a wall-clock budget (steps sized from the pace, then frozen and saved)
    epoch_steps: int = 200            # steps between validations and checkpoints
    batch_size: int = 32
    patch: int = 64                   # training crop size (px)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    select: str = "psnr"              # validation metric to maximise for the kept weights

    @model_validator(mode="after")
    def _one_budget(self):
        if sum(v is not None for v in (self.steps, self.epochs, self.minutes)) != 1:
            raise ValueError("give exactly one of steps, epochs or minutes")
        return self


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    torch.set_num_threads(len(os.sched_getaffinity(0)))   # all cores we may use
    return torch.device("cpu")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    samples_per_s: float
    best: dict[str, float]                       # validation metrics of the kept weights
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


def _to(batch, device):
    """A tensor or a tuple of tensors (x, cond) onto `device`."""
    return tuple(_to(b, device) for b in batch) if isinstance(batch, (tuple, list)) else batch.to(device)


def lr_at(step: int, total: int, cfg: TrainConfig, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model: torch.nn.Module, batches: Callable[[torch.Generator], torch.Tensor], val: torch.Tensor,
          cfg: TrainConfig, ckpt_dir: Path, on_step: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Train `model` in place (it ends holding the best weights) and return what happened.

    batches(gen) -> (B, ...) training batch on the model's device (a tensor, or a tuple such as (x, cond));
    val: a fixed validation batch of the same form.
    ckpt_dir: where resumable checkpoints live; an existing one is resumed.
    on_step(step, total, metrics): progress callback (metrics: last loss, last validation).
    """
    device = next(model.parameters()).device
    amp = device.type == "cuda"                  # bf16 autocast on GPUs; plain fp32 on the CPU
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    val_gen_seed = cfg.seed + 1                  # the same validation noise at every epoch
    val = _to(val, device)

    total = cfg.steps or (cfg.epochs * cfg.epoch_steps if cfg.epochs else None)
    step, elapsed, history, best, best_state = 0, 0.0, [], None, None
    resumed = load_training_state(ckpt_dir)
    if resumed is not None:
        weights, st = resumed
        model.load_state_dict(weights)
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        step, elapsed, total = st["step"], st["elapsed"], st["total"]
        history, best, best_state = st["history"], st["best"], st["best_state"]
    resumed_from = step
    warmup = min(cfg.warmup_steps, cfg.epoch_steps, max(1, (total or cfg.epoch_steps) // 10))

    model.train()
    t0 = time.perf_counter() - elapsed
    epoch_loss, epoch_n, epoch_t0, last_val = 0.0, 0, time.perf_counter(), history[-1] if history else {}
    while total is None or step < total:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total or 10 ** 9, cfg, warmup)
        x = batches(gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.loss(x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        epoch_loss += loss.item()
        epoch_n += 1
        if on_step:
            on_step(step, total or 0, {"loss": loss.item(), **last_val})
        if step % cfg.epoch_steps == 0 or step == total:
            model.eval()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                metrics = model.metrics(val, torch.Generator(device=device).manual_seed(val_gen_seed))
            model.train()
            elapsed = time.perf_counter() - t0
            last_val = {f"val_{k}": v for k, v in metrics.items()}
            history.append({"step": step, "train_loss": epoch_loss / max(1, epoch_n), **last_val,
                            "seconds": round(elapsed, 2)})
            if best is None or metrics[cfg.select] > best[cfg.select]:
                best = metrics
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if cfg.minutes is not None and (total is None or step <= total // 2):
                # Time budget: size the run from the last epoch's pace (validation included), re-estimated
                # over the first half (the machine's load drifts), then frozen so the cosine tail is smooth.
                per_step = (time.perf_counter() - epoch_t0) / epoch_n
                more = int((cfg.minutes * 60 - elapsed) / per_step) // cfg.epoch_steps * cfg.epoch_steps
                total = max(step, step + more)
            epoch_loss, epoch_n, epoch_t0 = 0.0, 0, time.perf_counter()
            save_training_state(ckpt_dir, step, model, {
                "optimizer": opt.state_dict(), "generator": gen.get_state(), "step": step,
                "elapsed": elapsed, "total": total, "history": history, "best": best, "best_state": best_state})
            if cfg.minutes is not None and elapsed > cfg.minutes * 60 * 1.15:
                break                # the machine slowed down: stop rather than overrun the budget
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - t0
    batch = cfg.batch_size
    return TrainResult(steps=step, seconds=round(seconds, 2), samples_per_s=round(step * batch / max(seconds, 1e-9), 1),
                       best=best, history=history, resumed_from=resumed_from)
