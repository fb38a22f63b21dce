"""Scheduled denoising and series scoring on a real Prefect server and a real process worker; and the
output-folder lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import photo, sine, write_csv

from formats.images import DecodedImage, encode_image

REPO = Path(__file__).resolve().parents[1]
AEFLOW = [sys.executable, "-m", "flows.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def noisy_folder(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        x = np.clip(photo(i, 64, 80) + 0.08 * rng.standard_normal((64, 80, 1)), 0, 1)
        (folder / f"{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_image(x, DecodedImage(x, None, "PNG", 8, None)))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on a free loopback port, with its own home and outputs; always stopped."""
    root = tmp_path_factory.mktemp("server")
    env = {**os.environ, "AEFLOW_OUTPUTS": str(root / "outputs"), "PREFECT_HOME": str(root / "prefect-home"),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1", "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    started = subprocess.run(AEFLOW + ["server", "start", "--port", str(free_port())], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield env
    finally:
        subprocess.run(AEFLOW + ["server", "stop"], env=env, cwd=REPO, timeout=60)


@contextmanager
def worker(env, log: Path):
    """`aeflow worker start` while the block runs, its output in `log`; it and its runs' processes stopped after."""
    proc = subprocess.Popen(AEFLOW + ["worker", "start"], env=env, cwd=REPO, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)            # nothing of its group may outlive the test
        except ProcessLookupError:
            pass


def aeflow(env, *args, timeout=180) -> str:
    r = subprocess.run(AEFLOW + list(args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_cron_next_fire_and_refusals():
    from datetime import timedelta

    from flows.schedule import next_fire

    nightly = next_fire("0 2 * * *", "Europe/Paris")
    assert (nightly.hour, nightly.minute, nightly.tzname()) in ((2, 0, "CET"), (2, 0, "CEST"))
    assert timedelta(0) < nightly - datetime.now(nightly.tzinfo) <= timedelta(days=1)
    assert next_fire("0 0 29 2 *").month == 2                # a leap day is rare, not impossible
    for cron, says in (("0 0 30 2 *", "never fires"), ("0 0 31 4 *", "never fires"), ("0 0 2 * * *", "5 fields"),
                       ("61 * * * *", "5 fields"), ("0 2 * *", "5 fields"), ("", "5 fields")):
        with pytest.raises(ValueError, match=says):
            next_fire(cron)
    with pytest.raises(ValueError, match="not a time zone"):
        next_fire("0 2 * * *", "Mars/Base")


@pytest.mark.prefect
def test_schedule_run_by_a_worker_is_incremental(server, tmp_path):
    src, dst = noisy_folder(tmp_path / "inbox", 4), tmp_path / "clean"
    (src / "broken.png").write_bytes(b"not an image")
    server = {**server, "COLUMNS": "1000"}                        # table cells unfolded, whatever the tmp path
    out = aeflow(server, "schedule", "denoise", str(src), str(dst), "--cron", "0 2 * * *",
                 "--timezone", "Europe/Paris", "--name", "nightly")
    assert "denoise-run/nightly" in out and "next 20" in out and ("CET" in out or "CEST" in out), out
    listing = aeflow(server, "schedule", "list")
    assert "nightly" in listing and "0 2 * * *" in listing and "Europe/Paris" in listing
    assert " 02:00 CE" in listing, listing                      # next runs in the schedule's zone, not UTC
    for args, says in ((["run", "nosuch"], "no scheduled job named 'nosuch'; known: nightly"),
                       (["denoise", str(src), str(src / "out"), "--cron", "0 2 * * *"], "must lie outside"),
                       (["denoise", str(src), str(dst), "--cron", "0 2 * * *", "--timezone", "Mars/Base"],
                        "not a time zone"),
                       (["denoise", str(src), str(dst), "--cron", "0 0 30 2 *"], "never fires"),
                       (["denoise", str(src), str(dst), "--cron", "0 0 2 * * *"], "give 5 fields"),
                       (["denoise", str(src), str(dst), "--cron", "0 2 * * *", "--model", "nosuch"], "nosuch"),
                       (["denoise", str(src), str(dst), "--cron", "0 2 * * *", "--reference", str(tmp_path / "no")],
                        "reference folder not found"),
                       (["pause", "nosuch"], "no scheduled job named 'nosuch'; known: nightly")):
        r = subprocess.run(AEFLOW + ["schedule", *args], env=server, cwd=REPO, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and says in r.stderr.replace("\n", " ") and "Traceback" not in r.stderr, r.stderr

    log = tmp_path / "worker.log"
    with worker(server, log):
        r = subprocess.run(AEFLOW + ["schedule", "run", "nightly", "--wait"], env=server, cwd=REPO,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 1, r.stdout + r.stderr                               # a file failed
        assert "Completed" in r.stdout and "4 processed" in r.stdout and "broken.png" in r.stdout, r.stdout
        report = json.loads((dst / ".aeflow" / "report.json").read_text())
        assert report["counts"]["processed"] == 4 and sorted(p.name for p in dst.glob("*.png")) == \
            [f"{i}.png" for i in range(4)]
        # the worker's output says what each run did
        assert f"denoise {src} -> {dst}: started" in log.read_text()
        deadline = time.monotonic() + 20
        while f"{dst}: 4 processed, 0 skipped, 1 failed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert f"{dst}: 4 processed, 0 skipped, 1 failed" in log.read_text(), log.read_text()[-3000:]
        listing = aeflow(server, "schedule", "list")
        assert f"{src} -> {dst}" in listing and "Completed, 1 file failed" in listing, listing
        r = subprocess.run(AEFLOW + ["schedule", "run", "nightly", "--wait"], env=server, cwd=REPO,
                           capture_output=True, text=True, timeout=240)
        assert "Completed" in r.stdout, r.stdout + r.stderr
        report = json.loads((dst / ".aeflow" / "report.json").read_text())
        assert report["counts"]["processed"] == 0 and report["counts"]["skipped"] == 4


@pytest.mark.prefect
def test_a_schedule_is_paused_resumed_and_deleted(server, tmp_path):
    src, dst = noisy_folder(tmp_path / "in", 1), tmp_path / "out"
    server = {**server, "COLUMNS": "1000"}
    aeflow(server, "schedule", "denoise", str(src), str(dst), "--cron", "0 3 * * *", "--name", "early")
    assert "paused early" in aeflow(server, "schedule", "pause", "early")
    row = next(line for line in aeflow(server, "schedule", "list").splitlines() if "early" in line)
    assert "paused" in row and "03:00" not in row, row                        # no next runs while paused
    assert "resumed early" in aeflow(server, "schedule", "resume", "early")
    assert "deleted early" in aeflow(server, "schedule", "delete", "early")
    assert "early" not in aeflow(server, "schedule", "list")
    r = subprocess.run(AEFLOW + ["schedule", "resume", "early"], env=server, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "no scheduled job named 'early'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.prefect
def test_a_command_uses_the_running_server_and_ends_without_prefect_chatter(server, tmp_path):
    import urllib.request

    src, dst = noisy_folder(tmp_path / "in", 2), tmp_path / "out"
    r = subprocess.run(AEFLOW + ["denoise", "run", str(src), str(dst)], env=server, cwd=REPO, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "temporary local API" not in r.stderr                     # no Prefect of its own
    assert "Still processing items" not in r.stderr, r.stderr         # Prefect's exit warning is filtered
    assert json.loads((dst / ".aeflow" / "report.json").read_text())["counts"]["processed"] == 2
    api = json.loads((Path(server["AEFLOW_OUTPUTS"]) / "server" / "server.json").read_text())["api_url"]
    query = urllib.request.Request(f"{api}/flow_runs/filter", data=b"{}", method="POST",
                                   headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(query, timeout=10) as resp:
        runs = json.load(resp)
    assert any(run["parameters"].get("out_dir") == str(dst) for run in runs)      # the run is on that server


@pytest.mark.prefect
def test_schedule_series_run_by_a_worker_scores_what_arrived(server, tmp_path, tiny_detector):
    src, dst = tmp_path / "series", tmp_path / "scored"
    src.mkdir()
    write_csv(src / "a.csv", sine(200, 1))
    server = {**server, "COLUMNS": "1000"}
    # a time that does not come during the test: a scheduled run beside the one started here would score first
    out = aeflow(server, "schedule", "series", str(src), str(dst), "--cron", "30 4 1 1 *", "--model",
                 tiny_detector["folder"], "--name", "quarterly")
    assert "anomaly-series-update/quarterly" in out and "next 20" in out, out
    with worker(server, tmp_path / "worker.log"):
        out = aeflow(server, "schedule", "run", "quarterly", "--wait", timeout=240)
        assert "Completed" in out and "200 new point(s) scored in 1 series" in out, out
    report = json.loads((dst / ".aeflow" / "report.json").read_text())
    assert report["job"] == "anomaly-series" and report["series"][0]["to"] == "2024-01-01 16:35:00"
    assert len((dst / "a" / "scores.csv").read_text().splitlines()) == 1 + 200


def test_schedule_series_refuses_what_could_never_run(tmp_path):
    from flows.schedule import schedule_series

    src = tmp_path / "series"
    src.mkdir()
    for args, error, says in (((src, tmp_path / "out", "*/15 * * * *", "UTC", "nosuch"), FileNotFoundError,
                               "--model nosuch: matches no detector"),
                              ((src, src / "out", "*/15 * * * *"), ValueError, "must lie outside"),
                              ((tmp_path / "no", tmp_path / "out", "*/15 * * * *"), FileNotFoundError, "no such folder"),
                              ((src, tmp_path / "out", "*/15 * * *"), ValueError, "give 5 fields")):
        with pytest.raises(error, match=says):
            schedule_series(*map(str, args[:2]), *args[2:])


HOLDER = textwrap.dedent("""
    import sys, time
    from flows.denoise import job_lock
    with job_lock(sys.argv[1], run="holder-run"):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_second_run_is_refused_with_the_holder_named_and_a_killed_holder_frees_the_lock(tmp_path):
    from flows.denoise import denoise_folder, job_lock

    src, dst = noisy_folder(tmp_path / "in", 1), tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(dst)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="locked by run holder-run"):
            denoise_folder(str(src), str(dst), progress=False, wait=1.0)
        assert time.monotonic() - t0 >= 1.0                            # it waited before giving up
        assert not list(dst.glob("*.png"))                               # and wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)                               # a killed run: its lock is stale
        holder.wait()
    with job_lock(str(dst), run="next", wait=5):                         # recovered at once
        assert json.loads((dst / ".aeflow" / "lock.json").read_text())["run"] == "next"


def test_files_still_being_written_are_left_for_the_next_look(tmp_path):
    from flows.denoise import plan_job

    src = noisy_folder(tmp_path / "in", 2)
    growing = src / "growing.png"
    growing.write_bytes(b"\x89PNG partial")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        with open({str(growing)!r}, "ab") as f:
            for _ in range(40):
                f.write(b"x" * 100); f.flush(); time.sleep(0.05)
    """)])
    try:
        plan = plan_job(str(src), str(tmp_path / "out"), settle=0.5)
    finally:
        writer.wait()
    assert [p["file"] for p in plan["pending"]] == ["growing.png"]
    assert sorted(rel for rel, _ in plan["todo"]) == ["0.png", "1.png"]
