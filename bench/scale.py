"""Fan-out of one denoise job over 1, 2 and 4 worker processes (not a test).

The job: 400 colour photos, the 256x256 centre crops of the first 400 JPEGs of CBSD432
(../shared/data/denoise/cbsd432, Berkeley photos; skipped with a line when absent) with white Gaussian noise
of sigma 25, as PNG, denoised by the shipped default (`--model auto`: the camera-noise colour model). Every
worker process is single-threaded (OMP_NUM_THREADS=1), so N workers use at most N cores.

Two ways to spread it over N workers, both against one `aeflow server start` (SQLite, or the database of
PREFECT_SERVER_DATABASE_CONNECTION_URL):
  pool  N `aeflow worker start --limit 1` on the pool `aeflow`; the folder split round-robin into N parts, one
        deployment per part (`aeflow schedule denoise`), the N runs requested at once (what `aeflow schedule run`
        does). Each worker runs its part in a new process (Prefect's process worker).
  dask  `dask scheduler` + `dask worker --nworkers N --nthreads 1` and `aeflow denoise run IN OUT --batches N
        --task-runner dask --dask-address tcp://...`: the N batches run as tasks on the N Dask workers.
What runs all the time in use (server, workers, Dask scheduler and workers, fresh for each measurement) is
started before the clock; what each job starts is timed: the pool's run processes (imports of Prefect and torch,
the worker's poll every 2 s), the dask command's own process and the Dask workers' first imports.

  wall        from the request (pool: the runs' creation; dask: the command's start) to the last report.json
  images/s    images / wall
  speed-up    images/s over the same mode's 1-worker images/s (medians over the repeats)
  outside     share of the wall time a worker spent not denoising: 1 - (sum of per-image seconds / N) / wall,
              where an image's seconds are the report's (the model call: noise-level estimate and network, and
              the model's load for the first batch; not decoding, encoding or writing). It counts process starts,
              imports, Prefect, planning, file reading and writing, contact sheets, idle workers waiting for the
              last one, and (with more workers than cores) nothing extra: a time-shared core stretches the
              per-image seconds as much as the wall time.

    .venv/bin/python bench/scale.py [--images 400] [--repeats 3] [--workers 1,2,4]

The modes run interleaved in each repeat (pool 1, dask 1, pool 2, ...), so background load hits both alike.
The table is printed and written to outputs/bench/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.denoise import DATA  # noqa: E402
from bench.overhead import free_port  # noqa: E402
from bench.schedule import sh  # noqa: E402
from flows.demo import add_noise  # noqa: E402
from formats.images import to_uint8  # noqa: E402

CBSD432 = DATA / "cbsd432"
WORK = ROOT / "outputs" / "bench" / "scale"
AEFLOW = [sys.executable, "-m", "flows.cli"]
# requests the pool's runs in one process, so that they start together; prints when it asked
REQUEST = "import sys, time; from flows.schedule import run_now; print(time.time()); [run_now(n) for n in sys.argv[1:]]"


def prepare(n: int) -> Path | None:
    """The job's input folder: n noisy 256x256 PNG crops (made once); None when CBSD432 has fewer photos."""
    photos = sorted(CBSD432.glob("*.jpg"))[:n]
    if len(photos) < n:
        return None
    folder = WORK / f"noisy{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for p in photos:
        if not (folder / f"{p.stem}.png").is_file():
            x = np.asarray(Image.open(p).convert("RGB"), np.float32) / 255      # (H, W, 3)
            top, left = (x.shape[0] - 256) // 2, (x.shape[1] - 256) // 2
            crop = x[top:top + 256, left:left + 256]
            Image.fromarray(to_uint8(add_noise(crop, 25, 0, p.name))).save(folder / f"{p.stem}.png")
    return folder


def split(noisy: Path, n: int) -> list[Path]:
    """The folder in n round-robin parts (hard links, no copies), one per pool worker."""
    parts = [WORK / f"parts{len(list(noisy.iterdir()))}" / f"{n}-{i}" for i in range(n)]
    for i, part in enumerate(parts):
        part.mkdir(parents=True, exist_ok=True)
        for p in sorted(noisy.glob("*.png"))[i::n]:
            if not (part / p.name).exists():
                os.link(p, part / p.name)
    return parts


@contextmanager
def daemons(cmds: list[list[str]], env: dict, logs: list[Path]):
    """Long-running processes (workers, a scheduler) while the block runs; each stopped with its group after."""
    procs = [subprocess.Popen(c, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True) for c, log in zip(cmds, logs)]
    try:
        yield procs
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def wait_for(what: str, check, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.2)


def reports(outs: list[Path], since: float) -> list[dict]:
    """The runs' reports once each is newer than `since`, with their files' mtimes (the end of each run)."""
    paths = [o / ".aeflow" / "report.json" for o in outs]
    wait_for("report", lambda: all(p.is_file() and p.stat().st_mtime > since for p in paths), timeout=1800)
    return [json.loads(p.read_text()) | {"written": p.stat().st_mtime} for p in paths]


def measure(runs: list[dict], n: int, start: float, images: int) -> dict:
    """images/s and the share of wall time outside denoising (module docstring) of one measurement."""
    done = sum(r["counts"]["processed"] for r in runs)
    if done != images:
        raise RuntimeError(f"{done} of {images} images processed: {[r['failed'][:2] for r in runs]}")
    wall = max(r["written"] for r in runs) - start
    denoising = sum(i["seconds"] for r in runs for i in r["images"]) / n
    return {"images_s": images / wall, "outside": 1 - denoising / wall, "wall": wall}


def pool(env: dict, parts: list[Path], images: int) -> dict:
    n = len(parts)
    outs = [WORK / "out" / f"pool-{n}-{i}" for i in range(n)]
    for o in outs:
        shutil.rmtree(o, ignore_errors=True)
    logs = [WORK / "logs" / f"pool-{n}-{i}.log" for i in range(n)]
    cmds = [AEFLOW + ["worker", "start", "--name", f"scale-{n}-{i}", "--limit", "1"] for i in range(n)]
    with daemons(cmds, env, logs):
        wait_for("worker start", lambda: all("started" in log.read_text(errors="replace") for log in logs))
        since = time.time()
        r = subprocess.run([sys.executable, "-c", REQUEST] + [f"scale-{n}-{i}" for i in range(n)], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True)
        runs = reports(outs, since)
    took = [sum("submitting flow run" in line for line in log.read_text(errors="replace").splitlines()) for log in logs]
    if took != [1] * n:                   # each worker ran one part: N processes, not one worker's N runs
        print(f"note: runs taken per pool worker {took}", file=sys.stderr)
    return measure(runs, n, float(r.stdout.split()[0]), images)


def dask(env: dict, noisy: Path, n: int, images: int) -> dict:
    from distributed import Client

    out = WORK / "out" / f"dask-{n}"
    shutil.rmtree(out, ignore_errors=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    cmds = [[sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
             "--no-dashboard"],
            [sys.executable, "-m", "dask", "worker", address, "--nworkers", str(n), "--nthreads", "1",
             "--host", "127.0.0.1", "--no-dashboard"]]
    with daemons(cmds, env, [WORK / "logs" / f"dask-{n}-{w}.log" for w in ("scheduler", "workers")]):
        wait_for("Dask scheduler", lambda: "Scheduler at" in (WORK / "logs" / f"dask-{n}-scheduler.log").read_text())
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n, timeout=300)
        start = time.time()
        sh(env, "denoise", "run", str(noisy), str(out), "--batches", str(n), "--task-runner", "dask",
           "--dask-address", address, timeout=1800)
        runs = reports([out], start)
    return measure(runs, n, start, images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2,4", help="worker counts; the first is the speed-up's base")
    args = ap.parse_args()
    noisy = prepare(args.images)
    if noisy is None:
        print(f"skipped: {CBSD432} is missing or holds fewer than {args.images} JPEGs (see bench/README.md)")
        return
    counts = [int(c) for c in args.workers.split(",")]
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK / "aeflow-outputs", ignore_errors=True)       # a fresh server database each time
    env = {**os.environ, "AEFLOW_OUTPUTS": str(WORK / "aeflow-outputs"), "PYTHONPATH": str(ROOT),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    load_before = os.getloadavg()
    results: dict[tuple[str, int], list[dict]] = {}
    sh(env, "server", "start", "--port", str(free_port()))
    try:
        parts = {n: split(noisy, n) for n in counts}
        for n, ps in parts.items():
            for i, part in enumerate(ps):
                sh(env, "schedule", "denoise", str(part), str(WORK / "out" / f"pool-{n}-{i}"), "--cron", "0 2 * * *",
                   "--name", f"scale-{n}-{i}")
        for rep in range(args.repeats):
            for n in counts:
                for mode, run in (("pool", lambda: pool(env, parts[n], args.images)),
                                  ("dask", lambda: dask(env, noisy, n, args.images))):
                    m = run()
                    results.setdefault((mode, n), []).append(m)
                    print(f"repeat {rep + 1}: {mode} x{n}: {m['images_s']:.2f} images/s, {m['wall']:.1f} s, "
                          f"outside {m['outside']:.0%}", file=sys.stderr)
    finally:
        sh(env, "server", "stop")
    load_after = os.getloadavg()
    table = (f"{args.images} images (256x256 colour, CBSD432 crops + sigma 25), shipped default model, single-threaded "
             f"workers; {len(os.sched_getaffinity(0))} cores; medians of {args.repeats} repeat(s); load average before "
             f"{load_before[0]:.2f}, after {load_after[0]:.2f}\n\n"
             "| mode | workers | images/s | speed-up vs 1 worker | wall s | outside denoising |\n"
             "|---|---:|---:|---:|---:|---:|\n")
    for mode in ("pool", "dask"):
        base = statistics.median(m["images_s"] for m in results[(mode, counts[0])])
        for n in counts:
            ms = results[(mode, n)]
            rate = statistics.median(m["images_s"] for m in ms)
            table += (f"| {mode} | {n} | {rate:.2f} | {rate / base:.2f}x | {statistics.median(m['wall'] for m in ms):.1f}"
                      f" | {statistics.median(m['outside'] for m in ms):.0%} |\n")
    print("\n" + table)
    (WORK.parent / "scale.md").write_text(table)


if __name__ == "__main__":
    main()
