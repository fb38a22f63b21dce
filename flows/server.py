"""`aeflow server start|stop`: one Prefect server in the background, bound to loopback by default.

Its address goes to outputs/server/server.json; `flows.settings` points every later aeflow command at
it (no temporary API per command). Anyone who can reach an open Prefect API can run code on its
workers: bind to another interface only with PREFECT_SERVER_API_AUTH_STRING set and TLS in front.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows.settings import outputs_root, running_server_url, server_file

STARTUP_TIMEOUT_S = 120      # 14-26 s measured here on a fresh SQLite database under load


def start(host: str = "127.0.0.1", port: int = 4200, auth: str | None = None) -> dict:
    """Start the server in the background and wait for its health check. `auth` ("user:password") makes
    every API call but the health check require it (Prefect's PREFECT_SERVER_API_AUTH_STRING)."""
    if (url := running_server_url()) is not None:
        return json.loads(server_file().read_text()) | {"api_url": url}
    if host not in ("127.0.0.1", "localhost", "::1") and not auth:
        raise ValueError(f"refusing to open the API on {host} without --auth user:password: anyone who can reach "
                         "it could run code on your workers")
    folder = server_file().parent
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(outputs_root() / ".prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env.pop("PREFECT_API_URL", None)
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    log = open(folder / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    api = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/api"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}; see {folder / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        raise RuntimeError(f"prefect server did not answer within {STARTUP_TIMEOUT_S} s; see {folder / 'server.log'}")
    info = {"pid": proc.pid, "api_url": api, "ui_url": api[:-4], "host": host, "port": port,
            "started_s": round(time.monotonic() - deadline + STARTUP_TIMEOUT_S, 1)}
    # readable by this user only: it may hold the auth string that local commands send
    fd = os.open(server_file(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info | ({"auth": auth} if auth else {}), f)
    return info


def stop() -> bool:
    path = server_file()
    if not path.is_file():
        return False
    info = json.loads(path.read_text())
    try:
        os.killpg(info["pid"], signal.SIGTERM)
        for _ in range(100):
            os.killpg(info["pid"], 0)
            time.sleep(0.1)
        os.killpg(info["pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass
    Path(path).unlink(missing_ok=True)
    return True
