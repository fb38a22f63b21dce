"""`denoise run`'s bookkeeping under hostile conditions: links in OUT, a corrupt index, outputs changed behind
its back, a full disk, a second run, requests it cannot honour, mixed gray and colour folders, its report and
contact sheets. Real files, real decodes, the shipped models (48x64 images: a few ms each on a CPU)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import photo
from PIL import Image

from formats.images import DecodedImage, encode_image, read_image

REPO = Path(__file__).resolve().parents[1]


def noisy(path: Path, seed: int, channels: int = 1, h: int = 48, w: int = 64) -> None:
    x = np.clip(photo(seed, h, w, channels) + 0.1 * np.random.default_rng(seed).standard_normal((h, w, channels)), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(x, DecodedImage(x, None, "PNG", 8, None)))


def run(src: Path, dst: Path, **kw) -> dict:
    from flows.denoise import denoise_folder

    return denoise_folder(str(src), str(dst), progress=False, settle=0, **kw)


def test_a_folder_link_inside_out_cannot_send_outputs_outside(tmp_path):
    src, dst, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    noisy(src / "sub" / "x.png", 0)
    noisy(src / "y.png", 1)
    elsewhere.mkdir()
    dst.mkdir()
    (dst / "sub").symlink_to(elsewhere)
    report = run(src, dst)
    assert list(elsewhere.iterdir()) == []                                  # nothing landed outside OUT
    assert [f["file"] for f in report["failed"]] == ["sub/x.png"]
    assert "outside" in report["failed"][0]["reason"] and str(elsewhere) in report["failed"][0]["reason"]
    assert (dst / "y.png").is_file() and report["counts"]["processed"] == 1
    other = tmp_path / "out2"
    other.mkdir()
    (other / ".aeflow").symlink_to(elsewhere)                              # the bookkeeping folder too
    with pytest.raises(ValueError, match="outside the output folder"):
        run(src, other)
    assert list(elsewhere.iterdir()) == []


def test_a_corrupt_index_is_rebuilt_with_a_warning_naming_it(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    for i in range(2):
        noisy(src / f"{i}.png", i)
    run(src, dst)
    index = dst / ".aeflow" / "index.json"
    index.write_bytes(b"")                                                  # what a crash mid-copy leaves
    report = run(src, dst)
    assert report["counts"]["processed"] == 2                               # outputs made again, not trusted
    assert [w for w in report["warnings"] if str(index) in w and "rebuilt" in w]
    assert json.loads(index.read_text()).keys() == {"0.png", "1.png"}
    assert run(src, dst)["counts"]["skipped"] == 2


def test_an_output_changed_behind_the_index_is_made_again_even_at_the_same_size_and_time(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        noisy(src / f"{i}.png", i)
    run(src, dst)
    good = {i: (dst / f"{i}.png").read_bytes() for i in range(4)}
    for i in (0, 1):                       # one byte flipped in place: the size stays
        p = dst / f"{i}.png"
        st = p.stat()
        data = bytearray(good[i])
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
        if i == 1:                         # ... and its time set back as well
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(dst / "2.png")                # only touched: content intact
    report = run(src, dst)
    status = {r["file"]: r["status"] for r in report["images"]}
    assert status == {"0.png": "processed", "1.png": "processed", "2.png": "skipped", "3.png": "skipped"}
    assert all((dst / f"{i}.png").read_bytes() == good[i] for i in range(4))


HOLDER = textwrap.dedent("""
    import sys, time
    from flows.denoise import job_lock
    with job_lock(sys.argv[1], run="holder-run"):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_a_second_run_on_a_locked_folder_is_one_line_and_exit_3(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    noisy(src / "0.png", 0)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "1000"}     # issue 17 item 1 fixes the 80 columns
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(dst)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run([sys.executable, "-m", "flows.cli", "denoise", "run", str(src), str(dst)], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "locked by run holder-run" in r.stderr and f"pid {holder.pid}" in r.stderr
    assert "Traceback" not in r.stderr and not list(dst.glob("*.png"))


def test_sigma_a_blind_model_cannot_take_is_warned_and_every_model_is_named(tmp_path, capsys):
    from flows.cli.denoise import print_report

    src, dst = tmp_path / "in", tmp_path / "out"
    noisy(src / "g.png", 0)
    noisy(src / "c.png", 1, channels=3)
    report = run(src, dst, sigma=15)
    warnings = [w for w in report["warnings"] if "--sigma 15" in w]
    assert len(warnings) == 1 and "skip-dae-gray is blind" in warnings[0]  # no s15 model: the blind gray one says so
    levels = {r["file"]: r.get("noise_level") for r in report["images"]}
    assert levels == {"g.png": None, "c.png": 15}                          # the colour noise-map model takes it
    assert {r["file"]: r["model"] for r in report["images"]} == {"g.png": "skip-dae-gray", "c.png": "skip-dae-color"}
    assert report["models"] == {"skip-dae-color": 1, "skip-dae-gray": 1}
    assert not [w for w in run(src, tmp_path / "out25", sigma=25)["warnings"] if "skip-dae-gray" in w]  # s25 exists
    fixed = run(src, tmp_path / "s25", model="skip-dae-gray-s25", sigma=15)["warnings"]
    assert fixed == ["--sigma 15: skip-dae-gray-s25 was trained for sigma 25 only"]
    print_report(report)
    printed = capsys.readouterr().out
    assert "skip-dae-gray" in printed and "skip-dae-color" in printed and "--sigma 15" in printed


def test_gray_images_with_an_explicit_colour_model_are_replicated_with_a_warning(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    noisy(src / "g.png", 0)
    noisy(src / "g2.png", 2)                                               # same shape: one batch of two
    noisy(src / "odd" / "g3.png", 3, h=40)                                 # alone: the tiled path
    noisy(src / "c.png", 1, channels=3, h=40)
    report = run(src, dst, model="skip-dae-color")
    assert report["counts"]["failed"] == 0 and report["counts"]["processed"] == 4
    for name, clean in (("g.png", photo(0)), ("g2.png", photo(2)), ("odd/g3.png", photo(3, 40))):
        out, noisy_in = read_image(dst / name).pixels, read_image(src / name).pixels
        assert out.shape == clean.shape                                    # still gray
        assert np.mean((out - clean) ** 2) < 0.8 * np.mean((noisy_in - clean) ** 2)     # and denoised (some)
    assert [w for w in report["warnings"] if "3 gray image(s) (g.png, g2.png, odd/g3.png)" in w and "skip-dae-color" in w]
    assert {r["file"]: r.get("note", "") for r in report["images"]}["g2.png"].startswith("gray image denoised by")
    auto = run(src, tmp_path / "auto")                                     # auto: each kind to its own model
    gray, colour = "skip-dae-camera-gray", "skip-dae-camera"                 # auto: the real-photo models
    assert {r["file"]: r["model"] for r in auto["images"]} == {"g.png": gray, "g2.png": gray, "odd/g3.png": gray,
                                                               "c.png": colour}
    assert not auto.get("warnings")


def test_contact_sheets_show_every_image_by_name_and_a_rerun_keeps_the_scores(tmp_path):
    from flows.denoise import SHEET_ROWS

    src, dst, ref = tmp_path / "in", tmp_path / "out", tmp_path / "clean"
    n = SHEET_ROWS + 3
    for i in range(n):
        noisy(src / f"img{i:02d}.png", i)
        x = photo(i)
        (ref / f"img{i:02d}.png").parent.mkdir(parents=True, exist_ok=True)
        (ref / f"img{i:02d}.png").write_bytes(encode_image(x, DecodedImage(x, None, "PNG", 8, None)))
    (dst / ".aeflow").mkdir(parents=True)
    (dst / ".aeflow" / "contact_sheet-7.png").write_bytes(b"an earlier run's page")
    first = run(src, dst, reference=str(ref))
    pages = [Path(p) for p in first["contact_sheets"]]
    assert [p.name for p in pages] == ["contact_sheet-1.png", "contact_sheet-2.png"]
    assert sorted(p.name for p in (dst / ".aeflow").glob("contact_sheet*")) == [p.name for p in pages]
    heights = [Image.open(p).height for p in pages]
    assert heights[0] > heights[1]                                          # 8 rows, then 3
    again = run(src, dst)                                                   # nothing to do, no --reference
    assert again["counts"]["skipped"] == n
    assert {r["file"]: r["psnr"] for r in again["images"]} == {r["file"]: r["psnr"] for r in first["images"]}
    assert again["mean"] == first["mean"] and again["contact_sheets"] == first["contact_sheets"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_one_line_naming_the_file_and_what_was_kept(tmp_path):
    from flows.denoise import DiskFull, denoise_folder

    src, dst = tmp_path / "in", tmp_path / "out"
    for i in range(12):
        noisy(src / f"{i:02d}.png", i, channels=3, h=96, w=128)            # ~25 KB outputs
    dst.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(dst)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(DiskFull) as e:
            denoise_folder(str(src), str(dst), progress=False, settle=0)
        message = str(e.value)
        assert "\n" not in message and "no space left on device" in message
        kept = sorted(p.name for p in dst.glob("*.png"))
        assert kept and len(kept) < 12 and str(dst) in message and f"kept the {len(kept)} outputs" in message
        assert e.value.exit_status == 4
        assert not list(dst.rglob(".*.tmp"))                               # no half-written file left
        indexed = {}
        for shard in (dst / ".aeflow" / "index.d").glob("*.json"):
            indexed.update(json.loads(shard.read_text()))
        assert sorted(indexed) == kept                                     # the index holds them
    finally:
        subprocess.run(["umount", str(dst)])


@pytest.mark.prefect
def test_the_flow_raises_the_lock_error_the_command_turns_into_exit_3(tmp_path):
    from flows.denoise import FolderLocked
    from flows.pipelines import denoise_run_flow

    src, dst = tmp_path / "in", tmp_path / "out"
    noisy(src / "0.png", 0)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(dst)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLocked, match="locked by run holder-run") as e:
            denoise_run_flow(str(src), str(dst), progress=False)
        assert e.value.exit_status == 3
    finally:
        holder.kill()
        holder.wait()


def test_auto_takes_the_camera_model_and_strength_steers_a_noise_map_model(tmp_path):
    src = tmp_path / "in"
    noisy(src / "c.png", 1, channels=3)
    moved = []
    for strength in (0.5, 1.0, 2.0):
        report = run(src, tmp_path / f"out{strength}", strength=strength)
        row = report["images"][0]
        assert row["model"] == "skip-dae-camera" and report["models"] == {"skip-dae-camera": 1}
        assert row["noise_level"] > 0 and row.get("strength", 1.0) == strength
        out, inp = read_image(tmp_path / f"out{strength}" / "c.png").pixels, read_image(src / "c.png").pixels
        moved.append(float(np.mean(np.abs(out - inp))))
    assert moved[0] < moved[1] < moved[2], moved            # more strength, more taken out
    gaussian = run(src, tmp_path / "gauss", noise="gaussian")
    assert gaussian["images"][0]["model"] == "skip-dae-color"


def test_a_batch_given_threads_keeps_them_while_it_denoises(tmp_path, monkeypatch):
    """`--batches N` gives each batch cores // N torch threads: loading the model (which picks the device, and on
    the CPU sets a thread per core) must not undo that, or N batches oversubscribe the machine."""
    import torch

    from flows.denoise import denoise_files, plan_job

    src, dst = tmp_path / "in", tmp_path / "out"
    noisy(src / "a.png", 0)
    plan = plan_job(str(src), str(dst))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")              # what picking the CPU would set, on any machine
    before = torch.get_num_threads()
    try:
        batch = denoise_files(plan, plan["todo"], progress=False, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert len(batch["rows"]) == 1 and (dst / "a.png").is_file()
