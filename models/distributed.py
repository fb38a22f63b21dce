"""Data-parallel training over processes and hosts, with torch.distributed (gloo on CPUs, nccl on GPUs).

A command runs as one process per rank, under torch's launcher (`--nproc N` starts it; a user's own `torchrun`
works the same). Rank 0 does the command's work (Prefect, ingest, the stage folders); the other ranks do
nothing but wait in `serve` for the trainings rank 0 sends them. A training is sent as a recipe: a top-level
function that builds its parts (model, batches, validation batch) and its small arguments, so that each rank
reads its data from the shared outputs/ instead of receiving it, and builds exactly what rank 0 builds.
"""

from __future__ import annotations

import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

# How long a rank waits on the others: rank 0 may spend long on ingest before the first training, and a
# rank that dies is noticed by the launcher, which stops the group, so a long wait costs nothing.
WAIT = timedelta(hours=6)


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the group's size, as the launcher set them (0, 1 outside a launcher)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_size() -> int:
    """Ranks on this host (they share its cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def die_with_launcher() -> None:
    """A rank ends when its launcher ends, even by kill -9 (the launcher starts each rank in a session of its own,
    so it would otherwise train on, orphaned): Linux's parent-death signal. Elsewhere the launcher's clean-up only."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent == 1 or os.getppid() != parent:                          # gone already
        os._exit(1)


def join() -> None:
    """Join the group (once): gloo for CPU tensors, nccl for CUDA ones when this host has GPUs."""
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=WAIT)


def run(parts: Callable, args: tuple, cfg, ckpt_dir: Path, **kwargs):
    """Build `parts(*args)` -> (net, learner, batches, val, facts) and train the learner (models.trainer.train), on
    every rank: rank 0 sends the recipe to the ranks in `serve` first. Returns (parts, the TrainResult)."""
    from models.trainer import train

    rank, size = rank_and_size()
    if size > 1 and rank == 0:                   # the others are in `serve`, which calls this with what it got
        join()
        dist.broadcast_object_list([(parts, args, cfg, ckpt_dir)], src=0)
    built = parts(*args)
    return built, train(built[1], built[2], built[3], cfg, ckpt_dir, **kwargs)


def serve() -> int:
    """A rank other than 0: train what rank 0 sends until it says it is done; writes nothing."""
    join()
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            break
        run(*box[0])
    dist.destroy_process_group()
    return 0


def finish() -> None:
    """Rank 0 at the end of its command: release the ranks waiting in `serve` (also when nothing was trained)."""
    rank, size = rank_and_size()
    if rank or size == 1:
        return
    join()
    dist.broadcast_object_list([None], src=0)
    dist.destroy_process_group()


def launch(nproc: int, command: list[str]) -> int:
    """Run `command` (a Python command line) as `nproc` ranks on this host under torch's launcher, with this
    host's cores shared between them; returns rank 0's exit status (or the first failed rank's). The ranks say
    their own errors; the launcher's log of them is left out, except a rank killed by a signal."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0)
    try:
        elastic_launch(config, command[0])(*command[1:])
    except ChildFailedError as e:
        rank, failure = min(e.failures.items())
        if failure.exitcode < 0:
            print(f"error: rank {rank} was killed by {signal.Signals(-failure.exitcode).name}", file=sys.stderr)
            return 1
        return failure.exitcode
    return 0
