"""Every test run writes into its own temporary outputs/ and Prefect home, never the user's."""

import os
import tempfile

# Before anything imports `flows` (which reads these to configure Prefect).
_root = tempfile.mkdtemp(prefix="aeflow-tests-")
os.environ["AEFLOW_OUTPUTS"] = os.path.join(_root, "outputs")
os.environ["PREFECT_HOME"] = os.path.join(_root, "prefect-home")
os.environ.pop("PREFECT_API_URL", None)          # never a user's server
os.environ.pop("PREFECT_PROFILES_PATH", None)
os.environ.setdefault("AEFLOW_API_IDLE_S", "120")   # the commands' kept temporary API: gone soon even if pytest is killed

from datetime import datetime, timedelta  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_MODEL = {"kind": "skip_dae", "widths": [8, 16], "blocks": [1, 1], "sigma": 25}
TINY_TRAINING = {"steps": 2, "epoch_steps": 1, "batch_size": 2, "patch": 32}


def photo(seed: int, h: int = 48, w: int = 64, channels: int = 1) -> np.ndarray:
    """A smooth synthetic photo in [0, 1] (gradients + blobs), (H, W, C) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, channels))
    for c in range(channels):
        a, b, f = rng.uniform(0.2, 0.8, 3)
        img[..., c] = 0.5 + 0.3 * np.sin(6 * f * xx + a * 3) * np.cos(5 * f * yy + b * 3)
    return img.clip(0, 1).astype(np.float32)


T0 = datetime(2024, 1, 1)
PERIOD = 48


def write_csv(path, values, step_min=5, start=0):
    """A NAB-style series file (timestamp,value), a point every `step_min` minutes from T0 + `start` steps; returns
    the timestamps."""
    stamps = [(T0 + timedelta(minutes=step_min * (start + i))).strftime("%Y-%m-%d %H:%M:%S") for i in range(len(values))]
    path.write_text("timestamp,value\n" + "".join(f"{t},{v:.6f}\n" for t, v in zip(stamps, values)))
    return stamps


def sine(n, seed, start=0, period=PERIOD):
    """A noisy sine, phase continued from point `start`."""
    t = np.arange(start, start + n)
    return 10 + 3 * np.sin(2 * np.pi * t / period) + np.random.default_rng(seed).normal(0, 0.05, n)


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory):
    """A series detector small enough to train in about a second (windows of 16, 40 steps, one pass), on one
    core: two torch threads on two shared cores are far slower for a model this small (test_anomaly's one_core)."""
    from flows.anomaly import train_series

    root = tmp_path_factory.mktemp("tiny")
    write_csv(root / "base.csv", sine(300, 5))
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        return train_series(root / "base.csv", window=16, train_fraction=1.0, drop=0, steps=40, progress=False)
    finally:
        os.sched_setaffinity(0, cores)


@pytest.fixture(scope="session", autouse=True)
def _stop_the_kept_temporary_api():
    """The commands the tests run share one kept temporary Prefect API (flows/server.py); stopped at the end."""
    yield
    from prefect.logging.handlers import APILogWorker

    from flows.server import stop_temporary

    APILogWorker.drain_all(timeout=5)  # the in-process runs' last logs, while the API still listens
    stop_temporary()


@pytest.fixture
def outputs_root():
    from flows.settings import outputs_root as root

    return root()
