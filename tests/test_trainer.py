"""Resumable, atomic training: kill -9 and resume gives the uninterrupted result; a full disk keeps the last checkpoint."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from models.checkpoints import load_training_state, save_training_state
from models.registry import build, parse_config
from models.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]

TRAIN_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from models.patches import PatchSampler, center_crops
    from models.registry import build, parse_config
    from models.trainer import TrainConfig, train
    from models.checkpoints import save_model
    ckpt, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(1, 40, 40, generator=g) for _ in range(3)]
    torch.manual_seed(0)
    model = build(parse_config({"kind": "skip_dae", "widths": [8, 16], "blocks": [1, 1], "sigma": [0, 55]}))
    cfg = TrainConfig(steps=30, epoch_steps=3, batch_size=4, patch=24, lr=1e-2, device="cpu")
    r = train(model, PatchSampler(imgs, 24, 4), center_crops(imgs, 24), cfg, ckpt,
              on_step=lambda *a: time.sleep(delay))      # a slow run, so that it can be killed half-way
    save_model(model, out, model.cfg.model_dump(mode="json"))
    print("resumed_from", r.resumed_from)
""")


def run_training(tmp_path, name, delay="0"):
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(tmp_path / f"ckpt-{name}"),
                             str(tmp_path / f"model-{name}"), delay], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    reference = run_training(tmp_path, "ref")
    victim = run_training(tmp_path, "kill", delay="0.1")
    pointer = tmp_path / "ckpt-kill" / "latest"
    deadline = time.monotonic() + 120
    while not (pointer.is_file() and pointer.read_text() >= "step-000000009"):
        assert victim.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = run_training(tmp_path, "kill")
    out, _ = resumed.communicate(timeout=300)
    reference.communicate(timeout=300)
    resumed_from = int(out.split()[-1])
    assert 9 <= resumed_from < 30, out
    ref = safetensors.torch.load_file(str(tmp_path / "model-ref" / "model.safetensors"))
    got = safetensors.torch.load_file(str(tmp_path / "model-kill" / "model.safetensors"))
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed run differs from the uninterrupted one"


FULL_DISK_SCRIPT = textwrap.dedent("""
    import resource, signal, sys, torch
    from models.checkpoints import save_training_state
    from models.registry import build, parse_config
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)               # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # a "disk" that takes 20 kB per file
    big = build(parse_config({"kind": "skip_dae", "widths": [32, 64], "blocks": [1, 1]}))
    try:
        save_training_state(sys.argv[1], 2, big, {"step": 2})
    except Exception as e:                                       # OSError, or safetensors' own error type
        print("write failed:", e)
        sys.exit(3)
""")


def test_full_disk_leaves_the_previous_checkpoint_intact(tmp_path):
    small = build(parse_config({"kind": "skip_dae", "widths": [4, 8], "blocks": [1, 1]}))
    save_training_state(tmp_path, 1, small, {"step": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 3, r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # no partial or temporary leftovers
    weights, state = load_training_state(tmp_path)
    assert state["step"] == 1
    assert all(torch.equal(weights[k], v) for k, v in small.state_dict().items())


def test_training_state_never_unpickles_code(tmp_path):
    """A checkpoint whose state.pt carries a pickled callable is refused (weights_only=True)."""
    small = build(parse_config({"kind": "skip_dae", "widths": [4, 8], "blocks": [1, 1]}))
    folder = save_training_state(tmp_path, 1, small, {"step": 1})

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    torch.save({"step": Payload()}, folder / "state.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_training_state(tmp_path)


def test_exactly_one_budget():
    with pytest.raises(ValueError, match="exactly one"):
        TrainConfig(steps=3, minutes=1)
    with pytest.raises(ValueError, match="exactly one"):
        TrainConfig()
    with pytest.raises(ValueError):
        TrainConfig(steps=3, bogus=1)


def test_init_starts_from_the_given_weights_and_refuses_a_misfit(tmp_path):
    """--init: with lr=0 the fine-tuned model must equal its starting model exactly; the start is in the key."""
    from conftest import TINY_MODEL, TINY_TRAINING, photo
    from PIL import Image

    from flows.ingest import ingest_images
    from flows.train import train_model
    from models.checkpoints import load_state

    for i in range(3):
        Image.fromarray((photo(i)[..., 0] * 255).astype("uint8")).save(tmp_path / f"p{i}.png")
    ingest_dir = ingest_images(str(tmp_path))
    base = train_model(ingest_dir, TINY_MODEL, TINY_TRAINING, progress=False)
    tuned = train_model(ingest_dir, TINY_MODEL, {**TINY_TRAINING, "lr": 0.0}, progress=False, init=base)
    untuned = train_model(ingest_dir, TINY_MODEL, {**TINY_TRAINING, "lr": 0.0}, progress=False)
    a, b, c = (load_state(Path(f)) for f in (base, tuned, untuned))
    assert tuned != untuned and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="do not fit"):
        train_model(ingest_dir, {**TINY_MODEL, "widths": [8, 24]}, TINY_TRAINING, progress=False, init=base)
