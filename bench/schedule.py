"""Scheduling figures (not a test): server start, latency from `schedule run` to the first image
written, a scheduled run's overhead against the same job run directly, and images per second with one
and two workers and with two batches. All on BSD68 noisy copies (sigma 25) and the shipped gray model.

    .venv/bin/python bench/schedule.py [--limit 68]
    PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://USER:PW@127.0.0.1:5432/DB .venv/bin/python bench/schedule.py

The table is printed and written to outputs/bench/schedule-<database>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import DIRECT, free_port, prepare  # noqa: E402

AEFLOW = [sys.executable, "-m", "flows.cli"]


def sh(env, *args, timeout=900) -> str:
    r = subprocess.run(AEFLOW + list(args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(r.stdout + r.stderr)
    return r.stdout


def worker(env, name):
    return subprocess.Popen(AEFLOW + ["worker", "start", "--name", name], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_report(out: Path, since: float, timeout: float = 900) -> dict:
    path = out / ".aeflow" / "report.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_mtime > since:
            return json.loads(path.read_text())
        time.sleep(0.2)
    raise TimeoutError(f"no report in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=68)
    args = ap.parse_args()
    work = ROOT / "outputs" / "bench" / "schedule"
    shutil.rmtree(work / "aeflow-outputs", ignore_errors=True)
    noisy = prepare(ROOT / "outputs" / "bench" / "overhead", args.limit)
    halves = [work / "half0", work / "half1"]                # the folder split in two, for two workers
    for i, half in enumerate(halves):
        half.mkdir(parents=True, exist_ok=True)
        for p in sorted(noisy.glob("*.png"))[i::2]:
            if not (half / p.name).exists():
                shutil.copy(p, half / p.name)
    env = {**os.environ, "AEFLOW_OUTPUTS": str(work / "aeflow-outputs"), "PYTHONPATH": str(ROOT),
           "PREFECT_WORKER_QUERY_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    rows = []
    url = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", "")
    database = "PostgreSQL" if url.startswith("postgresql") else "fresh SQLite"

    t0 = time.perf_counter()
    sh(env, "server", "start", "--port", str(free_port()))
    rows.append((f"server start, {database} (`aeflow server start` until /api/health answers)", f"{time.perf_counter() - t0:.1f} s"))
    workers = []
    try:
        for name, src, dst, batches in (("one", noisy, work / "out-one", 1), ("two-batches", noisy, work / "out-b2", 2),
                                        ("half0", halves[0], work / "out-h0", 1), ("half1", halves[1], work / "out-h1", 1)):
            sh(env, "schedule", "denoise", str(src), str(dst), "--cron", "0 2 * * *", "--name", name,
               "--batches", str(batches))
        workers.append(worker(env, "w1"))
        time.sleep(5)

        # one worker, one run: latency to the first image and the run's wall time
        out = work / "out-one"
        shutil.rmtree(out, ignore_errors=True)
        t0, since = time.perf_counter(), time.time()
        sh(env, "schedule", "run", "one")
        while not (out.is_dir() and any(out.glob("*.png"))):
            time.sleep(0.05)
        first = time.perf_counter() - t0
        report = wait_report(out, since)
        total = time.perf_counter() - t0
        shutil.rmtree(work / "direct", ignore_errors=True)
        t1 = time.perf_counter()
        subprocess.run([sys.executable, "-c", DIRECT, str(noisy), str(work / "direct")], env=env, cwd=ROOT, check=True)
        direct = time.perf_counter() - t1
        rows += [("`schedule run` -> first image written (1 worker polling every 2 s)", f"{first:.1f} s"),
                 (f"scheduled run, {args.limit} images: `schedule run` -> report written", f"{total:.1f} s"),
                 ("same job run directly (whole process, no Prefect)", f"{direct:.1f} s"),
                 ("scheduled run's overhead vs direct", f"{total - direct:.1f} s ({(total - direct) / total:.0%})"),
                 ("images/s, 1 worker, 1 batch (inside the run)", f"{report['images_per_s']:.2f}")]

        out = work / "out-b2"
        shutil.rmtree(out, ignore_errors=True)
        since = time.time()
        sh(env, "schedule", "run", "two-batches")
        rows.append(("images/s, 1 worker, 2 concurrent batches (inside the run)", f"{wait_report(out, since)['images_per_s']:.2f}"))

        workers.append(worker(env, "w2"))
        time.sleep(5)
        for o in ("out-h0", "out-h1"):
            shutil.rmtree(work / o, ignore_errors=True)
        t0, since = time.perf_counter(), time.time()
        sh(env, "schedule", "run", "half0")
        sh(env, "schedule", "run", "half1")
        reports = [wait_report(work / o, since) for o in ("out-h0", "out-h1")]
        wall = time.perf_counter() - t0
        done = sum(r["counts"]["processed"] for r in reports)
        rows.append(("images/s, 2 workers, each a half of the folder (from `schedule run` to both reports)",
                     f"{done / wall:.2f} ({done} images in {wall:.1f} s)"))
        rows.append(("images/s, 1 worker, 1 batch, same wall-clock measure", f"{args.limit / total:.2f}"))
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGTERM)
        sh(env, "server", "stop")
    table = f"{database}, 2-core CPU, load average {os.getloadavg()[0]:.1f}\n\n| figure | value |\n|---|---:|\n"
    table += "".join(f"| {k} | {v} |\n" for k, v in rows)
    print("\n" + table)
    (ROOT / "outputs" / "bench" / f"schedule-{database.split()[-1].lower()}.md").write_text(table)


if __name__ == "__main__":
    main()
