"""Where aeflow writes, and Prefect's embedded-mode defaults. Import this before `prefect`.

Prefect reads its settings when it is imported, so `configure()` runs at import of this module:
offline, no analytics, PREFECT_HOME under outputs/ (unless the user set one), a generous start-up
timeout for the temporary API (7-29 s measured here on 2 busy cores), and, when `aeflow server start`
left a healthy server behind, that server instead of a temporary one.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path


def outputs_root() -> Path:
    """Everything the pipeline writes lives here: $AEFLOW_OUTPUTS, else this checkout's outputs/ (wherever the
    command runs from: the same cache, models and server; nothing written into the folder a user is in)."""
    default = Path(__file__).resolve().parents[1] / "outputs"
    return Path(os.environ.get("AEFLOW_OUTPUTS", default)).expanduser().resolve()


def server_file() -> Path:
    return outputs_root() / "server" / "server.json"


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    """Whether the Prefect API at `api_url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def running_server() -> dict | None:
    """What `aeflow server start` recorded (api_url, pid, auth), if that server answers its health check."""
    try:
        info = json.loads(server_file().read_text())
        return info if healthy(info["api_url"]) else None
    except (OSError, ValueError, KeyError):
        return None


def running_server_url() -> str | None:
    info = running_server()
    return info["api_url"] if info else None


def sweep_orphaned_servers() -> list[int]:
    """Stop the temporary APIs that killed aeflow processes left (`kill -9` skips Prefect's atexit stop): Prefect
    starts them with this process's environment, so each carries its starter's AEFLOW_PID; one whose parent is
    no longer that process is an orphan. Linux (/proc); elsewhere, and for other users' processes, nothing."""
    import signal

    stopped = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"prefect.server.api.server:create_app" not in (proc / "cmdline").read_bytes():
                continue
            environ = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            starter = environ.get(b"AEFLOW_PID")
            if environ.get(b"PREFECT__SERVER_EPHEMERAL") == b"1" and starter and int(starter) != ppid:
                os.kill(int(proc.name), signal.SIGTERM)
                stopped.append(int(proc.name))
        except (OSError, ValueError, IndexError):          # gone meanwhile, another user's, not ours
            continue
    return stopped


def configure() -> None:
    env = os.environ
    env["AEFLOW_PID"] = str(os.getpid())      # inherited by the temporary API Prefect may start (see above)
    env.setdefault("PREFECT_HOME", str(outputs_root() / ".prefect"))
    Path(env["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)   # Prefect won't make parents
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    env.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")   # tasks return paths; nothing to pickle
    env.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # the CLI prints its own summary
    if "PREFECT_API_URL" not in env and (server := running_server()):
        env["PREFECT_API_URL"] = server["api_url"]
        if server.get("auth"):
            env.setdefault("PREFECT_API_AUTH_STRING", server["auth"])


configure()
