"""Prefect's share of a denoise job's wall time (not a test).

Times whole processes on the same 68-image job (BSD68 at sigma 25, noisy PNGs), each run into a fresh
output folder so that every run does the full work:
  direct    python -c "flows.denoise.denoise_folder(...)"    (same code, no Prefect imported)
  server    aeflow denoise run IN OUT, with `aeflow server start` running (the CLI finds it)
  embedded  aeflow denoise run IN OUT, no server (Prefect starts its temporary API)
Runs are interleaved (direct, server, direct, server, ...) so background load hits all modes alike.
Overhead = median(mode) - median(direct); share = overhead / median(mode).

    .venv/bin/python bench/overhead.py [--runs 5] [--embedded-runs 2] [--limit 68]
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


def timed(cmd: list[str], env: dict, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--embedded-runs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=68)
    args = ap.parse_args()
    work = ROOT / "outputs" / "bench" / "overhead"
    noisy = prepare(work, args.limit)
    env = {**os.environ, "AEFLOW_OUTPUTS": str(work / "aeflow-outputs")}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    aeflow = [str(ROOT / ".venv" / "bin" / "aeflow"), "denoise", "run", str(noisy), str(work / "out")]
    direct = [sys.executable, "-c", DIRECT, str(noisy), str(work / "out")]
    times: dict[str, list[float]] = {"direct": [], "server": [], "embedded": []}

    for _ in range(args.embedded_runs):                       # no server yet: temporary API per command
        times["embedded"].append(timed(aeflow, env, work / "out"))
        print(f"embedded {times['embedded'][-1]:.2f} s", file=sys.stderr)
    port = free_port()
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "aeflow"), "server", "start", "--port", str(port)], env=env,
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    server_start = time.perf_counter() - t0
    try:
        for _ in range(args.runs):
            for mode, cmd in (("direct", direct), ("server", aeflow)):
                times[mode].append(timed(cmd, env, work / "out"))
                print(f"{mode} {times[mode][-1]:.2f} s", file=sys.stderr)
    finally:
        subprocess.run([str(ROOT / ".venv" / "bin" / "aeflow"), "server", "stop"], env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL)

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
