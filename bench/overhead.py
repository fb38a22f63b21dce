"""Prefect's share of a denoise job's wall time (not a test).

Times whole processes on the same 68-image job (BSD68 at sigma 25, noisy PNGs), each run into a fresh
output folder so that every run does the full work:
  direct    python -c "flows.denoise.denoise_folder(...)"    (same code, no Prefect imported)
  server    aeflow denoise run IN OUT, with `aeflow server start` running (the CLI finds it)
  embedded  aeflow denoise run IN OUT, no server (Prefect starts its temporary API)
Runs are interleaved (direct, server, direct, server, ...) so background load hits all modes alike.
Overhead = median(mode) - median(direct); share = overhead / median(mode).

    .venv/bin/python bench/overhead.py [--runs 5] [--embedded-runs 2] [--limit 68]

--idle times the other case, a re-run with nothing to do (every output up to date), against issue 17's
targets: under 3 s with a server, under 8 s without one (embedded: "cold" stops the kept temporary API
first, so the command starts one; "warm" finds the one the previous command kept).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from flows.demo import add_noise  # noqa: E402
from formats.images import encode_image, find_images, read_image  # noqa: E402
from models.checkpoints import write_bytes_atomic  # noqa: E402

BSD68 = ROOT.parent / "shared" / "data" / "denoise" / "bsd68"
# ends as the CLI does (gc.freeze, see flows.cli.main), so that the difference is Prefect's alone
DIRECT = ("from flows.denoise import denoise_folder; import gc, sys; "
          "denoise_folder(sys.argv[1], sys.argv[2], progress=False); gc.freeze()")


def prepare(work: Path, limit: int) -> Path:
    noisy = work / "noisy"
    noisy.mkdir(parents=True, exist_ok=True)
    for path in find_images(BSD68)[:limit]:
        if not (noisy / path.name).is_file():
            img = read_image(path)
            write_bytes_atomic(noisy / path.name, encode_image(np.clip(add_noise(img.pixels, 25, 0, path.name), 0, 1), img))
    return noisy


def timed(cmd: list[str], env: dict, out: Path | None) -> float:
    """Wall seconds of `cmd`; `out` (when given) is removed first so that the run does the whole job."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server(env: dict, action: str) -> float:
    """`aeflow server start|stop`; returns its wall seconds."""
    t0 = time.perf_counter()
    extra = ["--port", str(free_port())] if action == "start" else []
    subprocess.run([str(ROOT / ".venv" / "bin" / "aeflow"), "server", action, *extra], env=env, check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def idle(aeflow: list[str], env: dict, runs: int, limit: int) -> None:
    """The nothing-to-do re-run, embedded (cold, warm) and with a server, interleaved per round."""
    stop_kept = [sys.executable, "-c", "from flows.server import stop_temporary; stop_temporary()"]
    subprocess.run(aeflow, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)      # the outputs, once
    times: dict[str, list[float]] = {"embedded, cold (starts the temporary API)": [],
                                     "embedded, warm (the kept temporary API)": [], "server": []}
    cold, warm, with_server = times
    for _ in range(runs):
        subprocess.run(stop_kept, env=env, check=True, cwd=ROOT)
        times[cold].append(timed(aeflow, env, None))
        times[warm].append(timed(aeflow, env, None))
        server(env, "start")
        try:
            times[with_server].append(timed(aeflow, env, None))
        finally:
            server(env, "stop")
    subprocess.run(stop_kept, env=env, check=True, cwd=ROOT)
    print(f"\n`aeflow denoise run` with nothing to do ({limit} images up to date), whole-process wall time; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| mode | runs | median s | min s | max s | target s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, ts in times.items():
        print(f"| {mode} | {len(ts)} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} | "
              f"{3 if mode == with_server else 8} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--embedded-runs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=68)
    ap.add_argument("--idle", action="store_true", help="time a re-run with nothing to do instead")
    args = ap.parse_args()
    work = ROOT / "outputs" / "bench" / "overhead"
    noisy = prepare(work, args.limit)
    env = {**os.environ, "AEFLOW_OUTPUTS": str(work / "aeflow-outputs")}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    aeflow = [str(ROOT / ".venv" / "bin" / "aeflow"), "denoise", "run", str(noisy), str(work / "out")]
    if args.idle:
        return idle(aeflow, env, args.runs, args.limit)
    direct = [sys.executable, "-c", DIRECT, str(noisy), str(work / "out")]
    times: dict[str, list[float]] = {"direct": [], "server": [], "embedded": []}

    for _ in range(args.embedded_runs):                       # no server yet: temporary API per command
        times["embedded"].append(timed(aeflow, env, work / "out"))
        print(f"embedded {times['embedded'][-1]:.2f} s", file=sys.stderr)
    server_start = server(env, "start")
    try:
        for _ in range(args.runs):
            for mode, cmd in (("direct", direct), ("server", aeflow)):
                times[mode].append(timed(cmd, env, work / "out"))
                print(f"{mode} {times[mode][-1]:.2f} s", file=sys.stderr)
    finally:
        server(env, "stop")

    base = statistics.median(times["direct"])
    print(f"\n{args.limit}-image denoise job (BSD68, sigma 25, shipped gray model, CPU), whole-process wall time; "
          f"server start took {server_start:.1f} s (not counted); load average {os.getloadavg()[0]:.1f}\n")
    print("| mode | runs | median s | min s | max s | overhead vs direct (s) | share of wall time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, ts in times.items():
        if ts:
            med = statistics.median(ts)
            extra = "" if mode == "direct" else f"{med - base:.2f} | {(med - base) / med:.1%}"
            print(f"| {mode} | {len(ts)} | {med:.2f} | {min(ts):.2f} | {max(ts):.2f} | {extra or '– | –'} |")


if __name__ == "__main__":
    main()
