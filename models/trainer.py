"""A generic, resumable training loop. It knows nothing about autoencoders: it calls `model.loss(x, gen)`
to train and `model.metrics(x, gen)` to validate, and keeps the weights with the best `select` metric.

Determinism: every random draw (patches, flips, noise) comes from one generator whose state is part
of the checkpoint, the learning rate is a pure function of the step, and checkpoints are taken at
epoch ends and at the last step; so a run with a step or epoch budget killed at any point and restarted
ends with the same weights as one that was not (on the CPU; CUDA kernels are not bit-reproducible).
A time budget depends on the machine's pace, so its runs are not reproducible.

Data-parallel (in a torch.distributed group, see models/distributed.py): every rank draws the same global batch
from the same seeded generator and trains on its own contiguous part of it through DistributedDataParallel,
which averages the gradients: the same mean gradient as one process with that batch. A loss's own noise
(corruptions, a VAE's sampling) comes from a generator of each rank's own, so a group matches one process
exactly for a loss without noise (a plain AE: the same batches, the same curve up to float rounding) and
statistically otherwise (one process also draws its noise from the batch generator, kept so that every
earlier figure stands, so its later batches differ). Rank 0 validates and checkpoints, with every rank's
noise state so that a killed group resumes exactly, and decides when a time budget is spent.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.distributed as dist
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
    """The GPU (this rank's, in a group), or the CPU with OMP_NUM_THREADS threads when set, else all the cores we
    may use (shared among this host's ranks)."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    cores = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or cores)))
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


def _part(batch, rank: int, size: int):
    """This rank's contiguous share of a global batch (a tensor or a tuple of them)."""
    if isinstance(batch, (tuple, list)):
        return tuple(_part(b, rank, size) for b in batch)
    share = len(batch) // size
    return batch[rank * share:(rank + 1) * share]


class _Loss(torch.nn.Module):
    """`learner.loss` as a forward pass: DistributedDataParallel reduces the gradients of what goes through forward."""

    def __init__(self, learner: torch.nn.Module):
        super().__init__()
        self.learner = learner

    def forward(self, x, gen: torch.Generator) -> torch.Tensor:
        return self.learner.loss(x, gen)


def lr_at(step: int, total: int, cfg: TrainConfig, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model: torch.nn.Module, batches: Callable[[torch.Generator], torch.Tensor], val: torch.Tensor,
          cfg: TrainConfig, ckpt_dir: Path, on_step: Callable[[int, int, dict], None] | None = None,
          warn: Callable[[str], None] | None = None) -> TrainResult:
    """Train `model` in place (it ends holding the best weights) and return what happened.

    batches(gen) -> (B, ...) training batch on the model's device (a tensor, or a tuple such as (x, cond));
    val: a fixed validation batch of the same form.
    ckpt_dir: where resumable checkpoints live; an existing one is resumed (a corrupted one is skipped for the
    one before it, said through `warn`).
    on_step(step, total, info): progress callback; info holds the last loss, the last validation and, for a
    time budget, `seconds_left`; total is 0 until known (a time budget's is an estimate, revised early on).

    A time budget (`minutes`) is checked after every step: the run ends, validated and checkpointed, at the
    first step past the budget. Its step count, which the learning-rate schedule needs, is sized from the
    pace of this run's steps (validations included), re-estimated over the first half of the run (the
    machine's load drifts) and then frozen, so that the cosine tail is smooth.
    """
    device = next(model.parameters()).device
    amp = device.type == "cuda"                  # bf16 autocast on GPUs; plain fp32 on the CPU
    rank, size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if cfg.batch_size % size:
        raise ValueError(f"batch size {cfg.batch_size} does not split over {size} processes: give a multiple of {size}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    noise, loss_of = gen, model.loss             # one process: one generator for batches and noise, as always
    if size > 1:
        noise = torch.Generator(device=device).manual_seed(cfg.seed + 1000 + rank)
        loss_of = torch.nn.parallel.DistributedDataParallel(
            _Loss(model), device_ids=[device.index] if device.type == "cuda" else None)
    val_gen_seed = cfg.seed + 1                  # the same validation noise at every epoch
    val = _to(val, device)

    total = cfg.steps or (cfg.epochs * cfg.epoch_steps if cfg.epochs else None)
    step, elapsed, history, best, best_state = 0, 0.0, [], None, None
    resumed = load_training_state(ckpt_dir, warn=warn) if rank == 0 else None
    if size > 1:                                 # rank 0's checkpoint, so that every rank resumes the same one
        box = [resumed]
        dist.broadcast_object_list(box, src=0)
        resumed = box[0]
    if resumed is not None:
        weights, st = resumed
        try:
            model.load_state_dict(weights)
            opt.load_state_dict(st["optimizer"])
            gen.set_state(st["generator"])
            if size > 1 and len(st.get("noise", ())) == size:      # else a run of another size: fresh noise
                noise.set_state(st["noise"][rank])
            step, elapsed, total = st["step"], st["elapsed"], st["total"]
            history, best, best_state = st["history"], st["best"], st["best_state"]
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"{ckpt_dir}: its checkpoint does not fit this run ({e.__class__.__name__}: "
                             f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); --refresh "
                             "discards the checkpoints and trains from the start") from None
    resumed_from = step
    budget = cfg.minutes * 60 if cfg.minutes is not None else None

    model.train()
    t0 = time.perf_counter() - elapsed
    pace_t, pace_step, per_step, next_estimate = None, step, None, time.perf_counter() + 1.0
    epoch_loss, epoch_n, last_val = 0.0, 0, history[-1] if history else {}
    while total is None or step < total:
        # the same warm-up as before for a step or epoch budget; a time budget's follows its estimate
        warmup = min(cfg.warmup_steps, cfg.epoch_steps, max(1, (total or cfg.epoch_steps) // 10))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total or 10 ** 9, cfg, warmup)
        x = batches(gen)
        if size > 1:
            x = _part(x, rank, size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_of(x, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        epoch_loss += loss.item()
        epoch_n += 1
        info = {"loss": loss.item(), **last_val}
        if budget is not None:                   # one clock read per step: cheap next to any step
            now = time.perf_counter()
            spent = now - t0
            if spent >= budget:
                total = step                     # out of time: this step is the last (validated, checkpointed)
            elif pace_t is None:
                pace_t, pace_step = now, step    # a run's first step pays for set-up (seconds): not in the pace
            elif now >= next_estimate and (total is None or step <= total // 2):
                per_step = (now - pace_t) / (step - pace_step)         # validations included
                total = step + max(1, int((budget - spent) / per_step))
                next_estimate = now + max(1.0, budget / 50)
            # what is left of the budget, or less when the (frozen) step count will be reached sooner
            info["seconds_left"] = max(0.0, min(budget - spent, (total - step) * per_step if per_step else budget))
            if size > 1:                         # rank 0's clock decides for all
                told = torch.tensor([total or 0])
                dist.broadcast(told, src=0)
                total = int(told) or None
        if on_step:
            on_step(step, total or 0, info)
        if (step % cfg.epoch_steps == 0 or step == total) and size > 1:
            summed = torch.tensor([epoch_loss], dtype=torch.float64)
            dist.all_reduce(summed)              # the epoch's loss over the whole batch, as one process reports it
            epoch_loss = summed.item() / size
            states = [None] * size
            dist.all_gather_object(states, noise.get_state())
            if rank:                             # rank 0 validates and checkpoints
                epoch_loss, epoch_n = 0.0, 0
                continue
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
            epoch_loss, epoch_n = 0.0, 0
            save_training_state(ckpt_dir, step, model, {
                "optimizer": opt.state_dict(), "generator": gen.get_state(), "step": step,
                "elapsed": elapsed, "total": total, "history": history, "best": best, "best_state": best_state,
                **({"noise": states} if size > 1 else {})})
    if best_state is not None:                   # None on ranks other than 0
        model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - t0
    batch = cfg.batch_size
    return TrainResult(steps=step, seconds=round(seconds, 2), samples_per_s=round(step * batch / max(seconds, 1e-9), 1),
                       best=best, history=history, resumed_from=resumed_from)
