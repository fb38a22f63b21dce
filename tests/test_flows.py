"""Real Prefect flow runs (embedded API, started once per test session) on tiny images."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, TINY_TRAINING, photo

from formats.images import DecodedImage, encode_image, read_image

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, pixels: np.ndarray, fmt: str = "PNG", bit_depth: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(pixels, DecodedImage(pixels, None, fmt, bit_depth, None)))


def tree_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    clean, noisy = root / "clean", root / "noisy"
    rng = np.random.default_rng(0)
    for i in range(3):
        write(clean / f"g{i}.png", photo(i))
        write(noisy / f"g{i}.png", np.clip(photo(i) + 0.1 * rng.standard_normal(photo(i).shape), 0, 1))
    write(clean / "sub" / "c.jpg", photo(5, channels=3), "JPEG")
    write(noisy / "sub" / "c.jpg", np.clip(photo(5, channels=3) + 0.1 * rng.standard_normal((48, 64, 3)), 0, 1), "JPEG")
    write(noisy / "deep" / "w16.png", photo(6), bit_depth=16)
    (noisy / "empty.png").write_bytes(b"")
    (noisy / "notes.png").write_text("not an image")
    good = (clean / "g0.png").read_bytes()
    (noisy / "truncated.png").write_bytes(good[: len(good) // 2])
    return clean, noisy


@pytest.mark.prefect
def test_train_then_denoise_twice_end_to_end(folders, tmp_path):
    from flows.pipelines import denoise_run_flow, denoise_train_flow

    clean, noisy = folders
    gray = {**TINY_MODEL, "channels": 1}          # a gray model also denoises colour images, channel by channel
    trained = denoise_train_flow(data=str(clean), model=gray, training=TINY_TRAINING, progress=False)
    model_dir = trained.folder
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["steps"] == 2 and cfg["model"]["channels"] == 1 and "val_psnr" in cfg["metrics"]
    assert cfg["data"]["job"] == "denoise" and cfg["metrics"] == trained.manifest["metrics"] and not trained.cached
    assert (model_dir / "curve.png").stat().st_size > 0
    weights_mtime = (model_dir / "model.safetensors").stat().st_mtime_ns
    # unchanged second run: the same folder, nothing retrained
    again = denoise_train_flow(data=str(clean), model=gray, training=TINY_TRAINING, progress=False)
    assert again.cached and again.folder == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == weights_mtime

    before = tree_hashes(noisy)
    out = tmp_path / "out"
    report = denoise_run_flow(str(noisy), str(out), model=str(model_dir), reference=str(clean), progress=False)
    assert report["counts"] == {"images": 8, "processed": 5, "skipped": 0, "failed": 3, "pending": 0}
    reasons = {f["file"]: f["reason"] for f in report["failed"]}
    assert set(reasons) == {"empty.png", "notes.png", "truncated.png"}
    assert "empty" in reasons["empty.png"] and "truncat" in reasons["truncated.png"]
    # the tree, names and formats are mirrored
    assert read_image(out / "sub" / "c.jpg").format == "JPEG"
    deep = read_image(out / "deep" / "w16.png")
    assert deep.format == "PNG" and deep.bit_depth == 16
    assert read_image(out / "g0.png").pixels.shape == (48, 64, 1)
    scored = [r for r in report["images"] if r.get("psnr") is not None]
    assert len(scored) == 4 and report["mean"]["psnr"] > 0          # 4 images have a reference
    assert (out / ".aeflow" / "report.json").is_file() and (out / ".aeflow" / "contact_sheet-1.png").is_file()

    outputs = tree_hashes(out)
    again = denoise_run_flow(str(noisy), str(out), model=str(model_dir), progress=False)
    assert again["counts"] == {"images": 8, "processed": 0, "skipped": 5, "failed": 3, "pending": 0}
    after = tree_hashes(out)
    assert {k: v for k, v in after.items() if not k.startswith(".aeflow")} == \
           {k: v for k, v in outputs.items() if not k.startswith(".aeflow")}      # nothing rewritten
    assert tree_hashes(noisy) == before                                         # inputs untouched

    write(noisy / "new.png", photo(9))
    third = denoise_run_flow(str(noisy), str(out), model=str(model_dir), progress=False)
    assert third["counts"]["processed"] == 1 and third["counts"]["skipped"] == 5
    (noisy / "new.png").unlink()


def test_output_folder_inside_or_around_input_is_refused(folders, tmp_path):
    from flows.denoise import denoise_folder

    _, noisy = folders
    for out in (noisy, noisy / "inner", noisy.parent):
        with pytest.raises(ValueError, match="outside the input folder"):
            denoise_folder(str(noisy), str(out), model="unused")
    assert not (noisy / "inner").exists()


KILL_SCRIPT = """
import sys
from flows.denoise import denoise_folder
r = denoise_folder(sys.argv[1], sys.argv[2], model=sys.argv[3], progress=False)
print(r["counts"]["processed"], r["counts"]["skipped"])
"""


def test_killed_denoise_job_loses_nothing_and_resumes(tmp_path):
    import torch

    from models.checkpoints import save_model
    from models.registry import build, parse_config

    torch.manual_seed(0)
    model = build(parse_config({"kind": "skip_dae", "channels": 1}))     # full size: slow enough to kill
    save_model(model, tmp_path / "model", model.cfg.model_dump(mode="json"))
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(24):
        write(src / f"{i:02d}.png", photo(i, 384, 384))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", KILL_SCRIPT, str(src), str(out), str(tmp_path / "model")]
    victim = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and len(list(out.glob("*.png"))) >= 2):
        assert victim.poll() is None and time.monotonic() < deadline, "job ended before it could be killed"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = len(list(out.glob("*.png")))
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".aeflow"]
    assert all(n.endswith(".tmp") for n in leftovers), leftovers     # at most a hidden temp, never a partial image
    for p in out.glob("*.png"):
        read_image(p)                                            # every file present decodes
    finished = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    processed, skipped = map(int, finished.stdout.split())
    assert processed + skipped == 24 and processed >= 24 - done_before and processed > 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:02d}.png" for i in range(24)]
    assert not list(out.rglob(".*.tmp"))                         # the resumed run swept what the kill left


@pytest.mark.prefect
def test_batches_fan_out_to_a_named_dask_cluster(folders, tmp_path):
    """--task-runner dask: the batches run as tasks on the workers of a real Dask cluster named by its
    scheduler address, and the result is the same as with one batch. (Thread workers in this process: worker
    processes would each start their own temporary Prefect API, 20-30 s apiece on 2 cores.)"""
    distributed = pytest.importorskip("distributed", reason="the `dask` extra is not installed")
    from flows.pipelines import denoise_run_flow

    clean, noisy = folders
    model = str(REPO / "models" / "pretrained" / "skip-dae-gray")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            report = denoise_run_flow(str(noisy), str(tmp_path / "dask"), model=model, batches=2,
                                      task_runner="dask", dask_address=cluster.scheduler_address, progress=False)
            done = client.run(lambda dask_worker: len(dask_worker.data) + len(dask_worker.state.log))
    assert report["counts"]["processed"] == 5 and report["counts"]["failed"] == 3
    assert report["batches"] == 2 and report["task_runner"] == "dask"
    assert sum(done.values()) > 0                                # the batches went through the cluster
    denoise_run_flow(str(noisy), str(tmp_path / "one"), model=model, progress=False)
    a, b = ({k: v[0] for k, v in tree_hashes(tmp_path / d).items() if not k.startswith(".aeflow")} for d in ("dask", "one"))
    assert len(a) == 5 and a == b                                # same bytes, however the work was split


def test_temporaries_of_a_killed_writer_are_swept_and_real_files_kept(tmp_path):
    from flows.denoise import sweep_temporaries

    (tmp_path / "sub").mkdir()
    (tmp_path / ".a.png.k3j2.tmp").write_bytes(b"half")
    (tmp_path / "sub" / ".b.jpg.x9.tmp").write_bytes(b"half")
    (tmp_path / "a.png").write_bytes(b"done")
    (tmp_path / "notes.tmp").write_bytes(b"the user's own")          # not hidden: not ours
    assert sweep_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png", "notes.tmp"]


ORPHAN_SCRIPT = """
import time
import flows.settings
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
server.start()
print(server.server_process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.prefect
def test_temporary_api_of_a_killed_command_is_stopped_by_the_next(tmp_path):
    """kill -9 skips Prefect's atexit stop of its temporary API (a real uvicorn process); the next command's
    sweep stops that orphan and leaves a live command's server alone."""
    from flows.settings import sweep_orphaned_servers

    env = {**os.environ, "PYTHONPATH": str(REPO), "AEFLOW_OUTPUTS": str(tmp_path / "outputs")}
    env.pop("PREFECT_API_URL", None)
    starters = [subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 text=True) for _ in range(2)]
    servers: list[int] = []
    try:
        killed, live = starters
        servers = [int(p.stdout.readline()) for p in starters]      # each prints once its API answers
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert Path(f"/proc/{servers[0]}").exists()                 # orphaned, still serving
        assert sweep_orphaned_servers() == [servers[0]]
        deadline = time.monotonic() + 30
        while running(servers[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(servers[0]) and running(servers[1]) and live.poll() is None
    finally:
        for p in starters:                                         # the live one too: its server is then an orphan
            p.kill()
            p.wait()
        sweep_orphaned_servers()
    deadline = time.monotonic() + 30
    while running(servers[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(servers[1])


def running(pid: int) -> bool:
    """A process that exists and is not a zombie waiting for its new parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_denoise_folder_keeps_kinds_and_metadata_and_reports_what_it_left_out(tmp_path):
    """Issue 17: a camera JPEG keeps its EXIF (or drops it with strip_metadata, which re-does the outputs), a
    GIF is denoised, an animated GIF / a multi-page TIFF / a folder link / a Pillow warning are in the report,
    a large image is denoised band by band from integers like the float path, max_pixels refuses from the header."""
    import struct

    import torch
    from PIL import Image

    from flows.denoise import denoise_folder
    from models.checkpoints import save_model
    from models.inference import denoise_image
    from models.registry import build, parse_config

    torch.manual_seed(0)
    model = build(parse_config({**TINY_MODEL, "channels": 1}))
    save_model(model, tmp_path / "model", model.cfg.model_dump(mode="json"))
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    u8 = lambda x: (np.clip(x, 0, 1) * 255).round().astype(np.uint8).squeeze(-1 if x.shape[-1] == 1 else ())  # noqa: E731
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS R5"
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    Image.fromarray(u8(photo(1, 96, 128, 3))).save(src / "cam.jpg", quality=80, exif=exif, dpi=(300, 300))
    Image.fromarray(u8(photo(2, 40, 50, 3))).save(src / "scan.gif")
    frames = [Image.fromarray(u8(photo(i, 40, 50, 3))) for i in (3, 4)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    pages = [Image.fromarray(u8(photo(i, 40, 50))) for i in (5, 6, 7)]
    pages[0].save(src / "pages.tif", save_all=True, append_images=pages[1:])
    bad_exif = (b"Exif\0\0II*\0" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x010F, 2, 100, 1000)
                + struct.pack("<I", 0))                                  # Make: data past the end of the block
    Image.fromarray(u8(photo(8))).save(src / "warn.jpg", exif=bad_exif)
    big = u8(photo(9, 700, 650))                                          # 455,000 px: banded, from integers
    Image.fromarray(big).save(src / "sub" / "big.png")
    (src / "link").symlink_to(src / "sub", target_is_directory=True)

    report = denoise_folder(str(src), str(out), model=str(tmp_path / "model"), progress=False, settle=0)
    assert report["counts"]["processed"] == 6 and report["counts"]["failed"] == 0
    notes = {r["file"]: r.get("notes", []) for r in report["images"]}
    assert "only the first" in notes["anim.gif"][0] and "pages 2-3" in notes["pages.tif"][0]
    assert notes["warn.jpg"] == ["UserWarning: Tag data larger than file. Skipping tag 271"]
    assert report["left_out"] == [{"file": "link", "reason": report["left_out"][0]["reason"]}]
    assert report["left_out"][0]["reason"].startswith("folder link")
    cam = Image.open(out / "cam.jpg")
    assert (cam.getexif().get(0x0110), cam.getexif().get_ifd(0x8769).get(0x9003)) == ("EOS R5", "2024:05:06 07:08:09")
    assert cam.info["dpi"] == (300, 300) and read_image(out / "cam.jpg").quality == 80
    assert Image.open(out / "scan.gif").format == "GIF" and Image.open(out / "scan.gif").mode == "P"
    with torch.inference_mode():                                          # the float path on the whole image
        whole = denoise_image(model, torch.from_numpy(big[None] / np.float32(255)).float())
    expected = np.rint(whole.clamp(0, 1)[0].numpy() * 255)
    got = np.asarray(Image.open(out / "sub" / "big.png")).astype(float)
    assert np.abs(got - expected).max() <= 1 and (got != expected).mean() < 0.01

    again = denoise_folder(str(src), str(out), model=str(tmp_path / "model"), progress=False, settle=0,
                           strip_metadata=True)
    assert again["counts"]["processed"] == 6                              # other options: other outputs
    assert not Image.open(out / "cam.jpg").getexif()
    small = denoise_folder(str(src), str(tmp_path / "out2"), model=str(tmp_path / "model"), progress=False,
                           settle=0, max_pixels=100_000)
    assert {f["file"]: f["reason"] for f in small["failed"]}["sub/big.png"] == \
        "650x700 = 0.46 MP exceeds the 0.1 MP limit (--max-pixels)"


@pytest.mark.prefect
def test_commands_share_a_kept_temporary_api_on_loopback_that_stops_when_unused(tmp_path, monkeypatch):
    """Without a server, the first command starts a temporary Prefect API (announced), the next reuses it (no
    start-up of its own: Prefect's own temporary server is disabled for it), and it stops itself once unused."""
    import fcntl

    src = tmp_path / "in"
    write(src / "a.png", photo(1))
    outputs = tmp_path / "outputs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "AEFLOW_OUTPUTS": str(outputs), "AEFLOW_API_IDLE_S": "2"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "denoise", "run", str(src), str(tmp_path / "out")]
    (outputs / "server").mkdir(parents=True)
    holder = open(outputs / "server" / "temporary.lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_SH)               # as a command in use would: it cannot stop meanwhile
    try:
        first = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0 and "started a temporary local API" in first.stderr, first.stderr
        info = json.loads((outputs / "server" / "temporary.json").read_text())
        port = int(info["api_url"].split(":")[2].split("/")[0])
        listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if line.split()[3] == "0A"]
        assert f"0100007F:{port:04X}" in listening                  # bound to 127.0.0.1 only
        second = subprocess.run(cmd, env={**env, "PREFECT_SERVER_EPHEMERAL_ENABLED": "false"}, cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 0 and "1 skipped" in second.stdout, second.stdout + second.stderr
        assert "temporary local API" not in second.stderr, second.stderr
        assert json.loads((outputs / "server" / "temporary.json").read_text())["pid"] == info["pid"]
        time.sleep(4)
        assert running(info["pid"])                                 # in use: kept past its idle time
    finally:
        holder.close()
    deadline = time.monotonic() + 60
    while running(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(info["pid"]) and not (outputs / "server" / "temporary.json").exists()
    assert "unused for" in (outputs / "server" / "temporary.log").read_text()

    monkeypatch.setenv("AEFLOW_OUTPUTS", str(outputs))              # `aeflow server stop` stops one too
    from flows.server import start_temporary

    info, started = start_temporary(idle_s=600)
    assert started and running(info["pid"])
    r = subprocess.run([sys.executable, "-m", "flows.cli", "server", "stop"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr
    assert not running(info["pid"]) and not (outputs / "server" / "temporary.json").exists()


@pytest.mark.parametrize("args, says", [
    (["--game", "zelda"], "--data is needed for zelda"),
    (["--game", "zelda", "--data", "EMPTY"], "no level files"),
])
def test_levels_train_without_its_data_is_a_line_before_prefect(tmp_path, args, says):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "AEFLOW_OUTPUTS": str(tmp_path / "outputs"), "COLUMNS": "300"}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "levels", "train", *args], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "temporary local API" not in r.stderr                    # no flow run was started
    assert not (tmp_path / "outputs" / "server" / "temporary.json").exists()   # nor an API left behind
