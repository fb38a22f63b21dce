"""Stage cache: keyed by content (not paths), hit when unchanged, rebuilt when a file fails its sha256."""

import shutil
from pathlib import Path

import pytest

from flows.stages import MANIFEST, Stage, StageResult, open_stage, read_manifest, run_stage


def fill_with(text, calls):
    def fill(tmp):
        calls.append(1)
        (tmp / "out.txt").write_text(text)
        return {"note": text}
    return fill


def test_hit_miss_refresh_and_corruption(outputs_root):
    calls = []
    stage = Stage("unit", 1, "demo", {"a": 1}, contents=("abc",))
    built = run_stage(stage, fill_with("x", calls))
    folder = built.folder
    assert not built.cached and calls == [1] and folder.name.startswith("demo-") and folder.parent.name == "unit"
    assert built.manifest["note"] == "x" and (folder / MANIFEST).is_file()

    hit = run_stage(stage, fill_with("y", calls))
    assert hit.cached is True and calls == [1] and hit.manifest == built.manifest     # unchanged: a hit
    assert open_stage(str(folder)) == hit and open_stage(hit) is hit                     # a path: read and verified
    assert run_stage(stage, fill_with("y", calls), refresh=True).cached is False         # --refresh rebuilds
    assert (folder / "out.txt").read_text() == "y" and calls == [1, 1]

    (folder / "out.txt").write_text("tampered")                                       # fails its sha256
    assert read_manifest(folder) is None
    with pytest.raises(FileNotFoundError, match=f"{folder}: not a finished stage folder"):
        open_stage(folder)
    again = run_stage(stage, fill_with("z", calls))
    assert isinstance(again, StageResult) and not again.cached and (folder / "out.txt").read_text() == "z"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_key_depends_on_content_config_version_upstream_not_order():
    base = Stage("s", 1, "x", {"a": 1}, contents=("h1", "h2"))
    assert base.key == Stage("s", 1, "renamed-slug-is-not-in-the-key", {"a": 1}, contents=("h2", "h1")).key
    for other in (Stage("s", 2, "x", {"a": 1}, contents=("h1", "h2")),
                  Stage("s", 1, "x", {"a": 2}, contents=("h1", "h2")),
                  Stage("s", 1, "x", {"a": 1}, contents=("h1", "h3")),
                  Stage("s", 1, "x", {"a": 1}, upstream=("k",), contents=("h1", "h2")),
                  Stage("t", 1, "x", {"a": 1}, contents=("h1", "h2"))):
        assert other.key != base.key


def test_failed_build_leaves_nothing(outputs_root):
    stage = Stage("unit", 1, "boom", {})

    def fill(tmp):
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("killed")

    try:
        run_stage(stage, fill)
    except RuntimeError:
        pass
    assert not stage.folder.exists()
    assert not [p for p in stage.folder.parent.iterdir() if p.name.startswith(".tmp-")]


def test_ingest_key_follows_content_not_location(tmp_path, outputs_root):
    from conftest import photo
    from flows.ingest import ingest_images
    from formats.images import DecodedImage, encode_image

    a = tmp_path / "a"
    a.mkdir()
    like = DecodedImage(pixels=photo(0), alpha=None, format="PNG", bit_depth=8, icc_profile=None)
    for i in range(2):
        (a / f"p{i}.png").write_bytes(encode_image(photo(i), like))
    first = ingest_images(str(a)).folder
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)                                   # same content, other path and mtimes
    assert ingest_images(str(b)).folder.name.rsplit("-", 1)[1] == first.name.rsplit("-", 1)[1]
    (b / "p1.png").write_bytes(encode_image(photo(7), like))      # content changed
    changed = ingest_images(str(b))
    assert changed.folder != first and changed.folder.parent == outputs_root / "ingest"
    assert len(changed.manifest["images"]) == 2


def test_a_killed_build_leaves_nothing_behind_once_the_stage_runs_again(outputs_root):
    import os
    import socket
    import subprocess
    import sys

    calls = []
    stage = Stage("unit", 1, "killed", {"a": 2}, contents=("abc",))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, name = socket.gethostname(), stage.folder.name
    stage.folder.parent.mkdir(parents=True, exist_ok=True)
    killed = stage.folder.parent / f".tmp-{name}-{host}-{int(dead.stdout)}-k1ll3d00"   # its process has ended
    live = stage.folder.parent / f".tmp-{name}-{host}-{os.getpid()}-l1v3b01d"          # a build still running
    remote = stage.folder.parent / f".tmp-{name}-elsewhere-{int(dead.stdout)}-r3m0t3ab"  # another host's
    for d in (killed, live, remote):
        d.mkdir()
        (d / "half.txt").write_text("partial")
    result = run_stage(stage, fill_with("x", calls))
    assert not result.cached and (result.folder / "out.txt").read_text() == "x"
    assert not killed.exists() and live.is_dir() and remote.is_dir()


def test_outputs_default_to_the_checkout_wherever_a_command_runs(monkeypatch, tmp_path):
    """Without AEFLOW_OUTPUTS, a command run from any folder (an inbox, say) uses this checkout's outputs/."""
    from flows.settings import outputs_root

    monkeypatch.delenv("AEFLOW_OUTPUTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert outputs_root() == Path(__file__).resolve().parents[1] / "outputs"
    monkeypatch.setenv("AEFLOW_OUTPUTS", str(tmp_path / "mine"))
    assert outputs_root() == tmp_path / "mine"


def test_ingest_lists_duplicate_files_it_left_out(tmp_path, outputs_root):
    from conftest import photo
    from flows.ingest import ingest_images
    from formats.images import DecodedImage, encode_image

    a = tmp_path / "a"
    (a / "copy").mkdir(parents=True)
    like = DecodedImage(pixels=photo(0), alpha=None, format="PNG", bit_depth=8, icc_profile=None)
    for i in range(2):
        (a / f"p{i}.png").write_bytes(encode_image(photo(i), like))
    shutil.copy(a / "p0.png", a / "copy" / "p0 (1).png")                 # same bytes, another name
    manifest = ingest_images(str(a)).manifest
    assert len(manifest["images"]) == 2
    assert manifest["duplicates"] == [{"file": "p0.png", "same_as": "copy/p0 (1).png"}]   # sorted order: first kept


FULL_DISK_INGEST = """
import resource, signal, sys
from flows.ingest import ingest_images
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)               # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # a "disk" that takes 20 kB per file
try:
    ingest_images(sys.argv[1])
except OSError as e:
    print(f"exit {e.exit_status}: {e}")
"""


def test_a_full_disk_while_building_a_stage_is_one_line_naming_the_file(tmp_path):
    """Before: safetensors' SafetensorError traceback ("I/O error: File too large"), no file named, exit 1."""
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    for i in range(2):                                           # 2 x 120 x 120 RGB uint16: 173 kB of tensors
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (120, 120, 3), np.uint8)).save(tmp_path / f"{i}.png")
    outputs = tmp_path / "outputs"
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", FULL_DISK_INGEST, str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(repo), "AEFLOW_OUTPUTS": str(outputs)})
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exit 4: "), r.stdout + r.stderr
    assert f"{outputs}/ingest/" in lines[0] and "/images.safetensors: file too large" in lines[0]
    assert "nothing of it was kept" in lines[0] and "[Errno" not in lines[0]
    assert not [p for p in (outputs / "ingest").iterdir()]      # no half-built or temporary folder left
