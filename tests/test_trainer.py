"""Resumable, atomic training: kill -9 and resume gives the uninterrupted result; a full disk keeps the last checkpoint."""

import os
import re
import shutil
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
    except OSError as e:
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
    # EFBIG here (a file-size limit stands in for a full disk without root): one line, the file, what was kept
    assert f"write failed: {tmp_path}/step-000000002/model.safetensors: file too large" in r.stdout
    assert "kept the previous checkpoint step-000000001" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # no partial or temporary leftovers
    weights, state = load_training_state(tmp_path)
    assert state["step"] == 1
    assert all(torch.equal(weights[k], v) for k, v in small.state_dict().items())


def test_training_state_never_unpickles_code(tmp_path, capsys):
    """A checkpoint whose state.pt carries a pickled callable is refused (weights_only=True), even when its
    SHA256SUMS was rewritten to match: one line naming the file, no advice to pass weights_only=False."""
    import hashlib

    from models.checkpoints import SUMS

    small = build(parse_config({"kind": "skip_dae", "widths": [4, 8], "blocks": [1, 1]}))
    folder = save_training_state(tmp_path, 1, small, {"step": 1})

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    torch.save({"step": Payload()}, folder / "state.pt")
    (folder / SUMS).write_text("".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
                                       for n in ("model.safetensors", "state.pt")))
    warnings = []
    with pytest.raises(ValueError) as e:
        load_training_state(tmp_path, warn=warnings.append)
    message = str(e.value)
    assert "\n" not in message and "weights_only" not in message and "Traceback" not in message
    assert "step-000000001/state.pt: refused" in message and "GLOBAL print" in message and "--refresh" in message
    assert "payload ran" not in capsys.readouterr().out
    assert len(warnings) == 1 and "state.pt" in warnings[0]


class Killed(Exception):
    """Stands for a kill -9 between two checkpoints."""


def tiny_run(ckpt, steps=6, kill_at=None):
    from models.patches import PatchSampler, center_crops
    from models.trainer import train

    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(1, 40, 40, generator=g) for _ in range(3)]
    torch.manual_seed(0)
    model = build(parse_config({"kind": "skip_dae", "widths": [4, 8], "blocks": [1, 1], "sigma": [0, 55]}))
    cfg = TrainConfig(steps=steps, epoch_steps=2, batch_size=2, patch=24, lr=1e-2, device="cpu")

    def on_step(step, total, info):
        if step == kill_at:
            raise Killed

    result = train(model, PatchSampler(imgs, 24, 2), center_crops(imgs, 24), cfg, ckpt, on_step=on_step)
    return model.state_dict(), result


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target", ["model.safetensors", "optimiser tensor in state.pt"])
def test_a_corrupted_checkpoint_is_skipped_for_the_previous_good_one(tmp_path, target, caplog):
    """One flipped byte in the newest checkpoint (weights, or an optimiser moment inside state.pt): it is skipped
    with a warning naming the file, the run resumes from the one before and still ends with the uninterrupted
    run's weights. Before: "resumed" from the corrupted one, different weights."""
    reference, _ = tiny_run(tmp_path / "ref")
    with pytest.raises(Killed):
        tiny_run(tmp_path / "ckpt", kill_at=5)                          # checkpoints at steps 2 and 4 remain
    newest = tmp_path / "ckpt" / "step-000000004"
    if target == "model.safetensors":
        flip_byte(newest / target, -3)
    else:
        state = torch.load(newest / "state.pt", weights_only=True)
        moment = state["optimizer"]["state"][0]["exp_avg"].numpy().tobytes()
        offset = (newest / "state.pt").read_bytes().find(moment)
        assert offset > 0
        flip_byte(newest / "state.pt", offset + 1)
    got, result = tiny_run(tmp_path / "ckpt")                          # warnings: logging, by default
    warnings = [r.getMessage() for r in caplog.records if r.name == "aeflow.checkpoints"]
    assert result.resumed_from == 2
    assert len(warnings) == 1 and "step-000000004/" in warnings[0] and "sha256 mismatch" in warnings[0]
    assert all(torch.equal(reference[k], got[k]) for k in reference), "resumed from a corrupted checkpoint"


def test_no_usable_checkpoint_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(Killed):
        tiny_run(tmp_path / "ckpt", kill_at=5)
    for step in (2, 4):
        flip_byte(tmp_path / "ckpt" / f"step-00000000{step}" / "model.safetensors", -3)
    with pytest.raises(ValueError, match=r"no usable checkpoint .*step-000000004/model.safetensors: sha256 mismatch"
                                         r".*--refresh") as e:
        tiny_run(tmp_path / "ckpt")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no usable checkpoint"):        # still so: not a silent fresh start
        tiny_run(tmp_path / "ckpt")


def test_the_latest_pointer_cannot_leave_the_checkpoint_folder(tmp_path, caplog):
    """`latest` naming ../elsewhere is ignored with a warning: only step folders of the checkpoint folder load."""
    small = build(parse_config({"kind": "skip_dae", "widths": [4, 8], "blocks": [1, 1]}))
    evil = save_training_state(tmp_path / "evil", 99, small, {"step": 99})      # a whole, self-consistent checkpoint
    ckpt = tmp_path / "run" / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "latest").write_text(f"../../evil/{evil.name}")
    assert load_training_state(ckpt) is None                                 # nothing of its own: a fresh start
    save_training_state(ckpt, 1, small, {"step": 1})
    (ckpt / "latest").write_text(str(evil))                                    # an absolute path, too
    weights, state = load_training_state(ckpt)
    assert state["step"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "aeflow.checkpoints"]
    assert len(warnings) == 2 and all("not a step folder" in w for w in warnings)


def try_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return r.returncode == 0


def test_a_full_disk_names_the_file_and_the_checkpoint_kept(tmp_path):
    """A real ENOSPC on a 256 KiB tmpfs (root only; else skipped: the RLIMIT_FSIZE test below covers EFBIG).
    Before: torch's "unexpected pos", no file, no word of the disk."""
    disk = tmp_path / "disk"
    if not try_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        small = build(parse_config({"kind": "skip_dae", "widths": [4, 8], "blocks": [1, 1]}))
        save_training_state(disk, 1, small, {"step": 1})
        before = sorted(p.name for p in disk.iterdir())
        big = build(parse_config({"kind": "skip_dae", "widths": [32, 64], "blocks": [1, 1]}))
        with pytest.raises(OSError) as e:
            save_training_state(disk, 2, big, {"step": 2})
        message = str(e.value)
        assert e.value.errno == 28 and "\n" not in message and "[Errno" not in message
        assert f"{disk}/step-000000002/model.safetensors: no space left on device" in message
        assert "kept the previous checkpoint step-000000001" in message
        assert sorted(p.name for p in disk.iterdir()) == before
        assert load_training_state(disk)[1]["step"] == 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


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
    ingest = ingest_images(str(tmp_path))
    base = train_model(ingest, TINY_MODEL, TINY_TRAINING, progress=False).folder
    tuned = train_model(ingest, TINY_MODEL, {**TINY_TRAINING, "lr": 0.0}, progress=False, init=str(base)).folder
    untuned = train_model(ingest, TINY_MODEL, {**TINY_TRAINING, "lr": 0.0}, progress=False).folder
    a, b, c = (load_state(f) for f in (base, tuned, untuned))
    assert tuned != untuned and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="do not fit"):
        train_model(ingest, {**TINY_MODEL, "widths": [8, 24]}, TINY_TRAINING, progress=False, init=str(base))


def test_a_time_budget_is_honoured_within_seconds_with_an_eta(tmp_path):
    """--minutes 0.1 (6 s) with epochs of 200 slow steps: the run stops at the budget, not after the first
    epoch; the total is known (from the pace) within about a second; time left counts down from the budget;
    the last step is validated and checkpointed. Before: 200 steps (over 10 s), total unknown until then."""
    from models.patches import PatchSampler, center_crops
    from models.trainer import train

    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(1, 40, 40, generator=g) for _ in range(3)]
    model = build(parse_config({"kind": "skip_dae", "widths": [4, 8], "blocks": [1, 1], "sigma": [0, 55]}))
    cfg = TrainConfig(minutes=0.1, epoch_steps=200, batch_size=2, patch=24, device="cpu")
    calls = []

    def on_step(step, total, info):
        calls.append((time.perf_counter(), step, total, info.get("seconds_left")))
        time.sleep(0.05)                                       # a slow machine: 200 steps take over 10 s

    result = train(model, PatchSampler(imgs, 24, 2), center_crops(imgs, 24), cfg, tmp_path / "ckpt", on_step=on_step)
    assert result.seconds < 6 + 3 and result.steps < 200, (result.seconds, result.steps)
    # the total is known from a second after the first step on (that step's set-up is left out of the pace)
    later = [total for t, _, total, _ in calls if t >= calls[0][0] + 1.0]
    assert later and all(later[1:]), calls[:20]
    lefts = [left for *_, left in calls]
    assert 2 < lefts[0] <= 6 and all(left <= 6 for left in lefts) and lefts[-1] < 1
    assert calls[-1][1] == calls[-1][2] == result.steps                        # the bar ends at N/N
    assert [h["step"] for h in result.history] == [result.steps]               # a validation at the end
    assert load_training_state(tmp_path / "ckpt")[1]["step"] == result.steps   # and a final checkpoint


def test_the_training_bar_shows_time_left_from_the_budget():
    from rich.progress import Progress, TimeRemainingColumn

    from flows.progress import BudgetRemainingColumn

    progress = Progress()
    progress.add_task("train", total=None, seconds_left=65.2)
    progress.add_task("train", total=None, seconds_left=None)
    column = BudgetRemainingColumn()
    assert column.render(progress.tasks[0]).plain == "0:01:05"
    assert column.render(progress.tasks[1]).plain == TimeRemainingColumn().render(progress.tasks[1]).plain  # rich's


def test_the_curve_of_a_short_run_is_drawn(tmp_path):
    """One validation (a short run): the points are drawn with markers. Before: a blank PNG."""
    import numpy as np
    from PIL import Image

    from flows.train import plot_curve

    plot_curve([{"step": 7, "train_loss": 0.02, "val_loss": 0.018, "val_psnr": 21.5}], tmp_path / "c.png", "t")
    px = np.asarray(Image.open(tmp_path / "c.png").convert("RGB")).astype(int)
    green = (abs(px - np.array([44, 160, 44])).sum(-1) < 40).sum()          # matplotlib's tab:green
    blue = (abs(px - np.array([31, 119, 180])).sum(-1) < 40).sum()          # tab:blue, the train loss
    assert green > 20 and blue > 20, (green, blue)


def tiny_images(folder: Path, n: int = 3) -> str:
    from conftest import photo
    from PIL import Image

    from flows.ingest import ingest_images

    folder.mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray((photo(i)[..., 0] * 255).astype("uint8")).save(folder / f"p{i}.png")
    return ingest_images(str(folder))


def test_refresh_discards_a_poisoned_checkpoint_and_starts_clean(tmp_path, outputs_root):
    """A stage whose work folder holds a poisoned checkpoint: one line; --refresh trains from step 0."""
    import hashlib

    from conftest import TINY_MODEL, TINY_TRAINING

    from flows.train import train_model
    from models.checkpoints import SUMS

    ingest_dir = tiny_images(tmp_path / "imgs")
    training = {**TINY_TRAINING, "seed": 7}
    folder = train_model(ingest_dir, TINY_MODEL, training, progress=False).folder
    shutil.rmtree(folder)                                     # as if that run had been killed after a checkpoint
    ckpt = outputs_root / "train" / ".work" / folder.name / "ckpt"
    small = build(parse_config({"kind": "skip_dae", "widths": [4, 8], "blocks": [1, 1]}))
    step = save_training_state(ckpt, 1, small, {"step": 1})
    torch.save({"step": print}, step / "state.pt")             # a pickled callable, its sums rewritten
    (step / SUMS).write_text("".join(f"{hashlib.sha256((step / n).read_bytes()).hexdigest()}  {n}\n"
                                     for n in ("model.safetensors", "state.pt")))
    with pytest.raises(ValueError, match="state.pt: refused.*--refresh"):
        train_model(ingest_dir, TINY_MODEL, training, progress=False)
    again = train_model(ingest_dir, TINY_MODEL, training, progress=False, refresh=True)
    assert again.folder == folder and not again.cached
    assert again.manifest["resumed_from_step"] == 0


def test_a_named_model_resolves_by_its_name_and_a_name_belongs_to_one_key(tmp_path):
    """--name: the folder is NAME-<key12>; `--model NAME` finds it even when NAME prefixes another model's name;
    the name for other settings is refused in one line; the same settings under a new name are copied."""
    from conftest import TINY_MODEL, TINY_TRAINING

    from flows.catalog import resolve_model
    from flows.train import train_model
    from models.checkpoints import load_state

    ingest_dir = tiny_images(tmp_path / "imgs")
    mine = train_model(ingest_dir, TINY_MODEL, TINY_TRAINING, progress=False, name="mine").folder
    other = train_model(ingest_dir, TINY_MODEL, {**TINY_TRAINING, "seed": 1}, progress=False, name="mine-two").folder
    assert re.fullmatch(r"mine-[0-9a-f]{12}", mine.name) and other.name.startswith("mine-two-")
    assert resolve_model("mine", 1, job="denoise") == mine
    assert resolve_model("mine-two", 1, job="denoise") == other
    with pytest.raises(FileExistsError, match=f"--name mine: already names .*{mine.name}"):
        train_model(ingest_dir, TINY_MODEL, {**TINY_TRAINING, "seed": 2}, progress=False, name="mine")
    copied = train_model(ingest_dir, TINY_MODEL, TINY_TRAINING, progress=False, name="mine-copy")
    copy, manifest = copied.folder, copied.manifest
    assert copy.name.split("-")[-1] == mine.name.split("-")[-1] and copied.cached  # same key, not trained again
    assert manifest["copied_from"] == mine.name and manifest["slug"] == "mine-copy"
    a, b = load_state(mine), load_state(copy)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_bad_name_is_refused_before_any_work():
    r = subprocess.run([sys.executable, "-m", "flows.cli", "denoise", "train", "--steps", "1", "--name", "My Model"],
                       cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert r.returncode == 2 and "'My Model': a name is up to 40 lower-case" in r.stdout + r.stderr
    assert "temporary local API" not in r.stderr
