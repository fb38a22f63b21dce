"""`aeflow server start|stop`: one Prefect server in the background, bound to loopback by default.

Its address goes to outputs/server/server.json; `flows.settings` points every later aeflow command at
it (no temporary API per command). Anyone who can reach an open Prefect API can run code on its
workers: bind to another interface only with PREFECT_SERVER_API_AUTH_STRING set and TLS in front.

Without that server, a command's flow runs on the *kept temporary API* (`temporary_api`): a Prefect API
without UI or scheduler on a loopback port, started by the first command that needs one and used by the
next ones, which would otherwise each pay 7-30 s to start and migrate their own. It stops itself after
IDLE_S seconds in which no command used it (`aeflow server stop` stops it at once). Commands hold a shared
lock on outputs/server/temporary.lock while they use it; it stops only when it can take that lock alone.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from flows.settings import healthy, outputs_root, running_server_url, server_file

STARTUP_TIMEOUT_S = 120      # 14-26 s measured here on a fresh SQLite database under load
IDLE_S = float(os.environ.get("AEFLOW_API_IDLE_S", 600))   # the kept temporary API stops after this long unused


def database_name(url: str | None, home: Path) -> str:
    """What a server stores its runs in, for people: 'PostgreSQL user@host:port/db' (never the password),
    or the SQLite file under PREFECT_HOME that Prefect uses when no URL is set."""
    if not url:
        return f"SQLite {home / 'prefect.db'}"
    from urllib.parse import urlsplit

    u = urlsplit(url)
    kind = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(u.scheme.split("+")[0], u.scheme)
    where = f"{u.username + '@' if u.username else ''}{u.hostname or ''}{':' + str(u.port) if u.port else ''}{u.path}"
    return f"{kind} {where}"


def start(host: str = "127.0.0.1", port: int = 4200, auth: str | None = None, database: str | None = None) -> dict:
    """Start the server in the background and wait for its health check. `auth` ("user:password") makes
    every API call but the health check require it (Prefect's PREFECT_SERVER_API_AUTH_STRING). `database`:
    a SQLAlchemy URL (postgresql+asyncpg://user:password@host:5432/db) for many workers and hosts; default
    PREFECT_SERVER_DATABASE_CONNECTION_URL when set, else SQLite under outputs/."""
    if (url := running_server_url()) is not None:
        return json.loads(server_file().read_text()) | {"api_url": url}
    stop_temporary()              # one server on the SQLite database at a time: the kept temporary API goes
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
    if database:          # the current name and the older one (which a user's environment may still set)
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
    log = open(folder / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    api = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/api"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}; see {folder / 'server.log'}")
        if healthy(api):
            break
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        raise RuntimeError(f"prefect server did not answer within {STARTUP_TIMEOUT_S} s; see {folder / 'server.log'}")
    info = {"pid": proc.pid, "api_url": api, "ui_url": api[:-4], "host": host, "port": port,
            "database": database_name(env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
                                      or env.get("PREFECT_API_DATABASE_CONNECTION_URL"), Path(env["PREFECT_HOME"])),
            "started_s": round(time.monotonic() - deadline + STARTUP_TIMEOUT_S, 1)}
    # readable by this user only: it may hold the auth string that local commands send
    fd = os.open(server_file(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info | ({"auth": auth} if auth else {}), f)
    return info


def stop() -> bool:
    """Stop the server of `aeflow server start` and the kept temporary API; False when neither was running."""
    stopped = stop_temporary()
    path = server_file()
    if not path.is_file():
        return stopped
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


# ---------------------------------------------------------------- the kept temporary API

def temporary_file() -> Path:
    return server_file().parent / "temporary.json"


def _lock_file(name: str):
    folder = server_file().parent
    folder.mkdir(parents=True, exist_ok=True)
    return open(folder / name, "a+")


def _ours(pid: int) -> bool:
    """Is `pid` a live temporary API of ours (not a reused pid)?"""
    try:
        return b"flows.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False
        try:                                               # no /proc (macOS): trust the pid
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    except OSError:
        return False


def temporary_api_info() -> dict | None:
    """The kept temporary API (pid, api_url, idle_s) if its process lives, healthy or still starting."""
    try:
        info = json.loads(temporary_file().read_text())
        return info if _ours(int(info["pid"])) else None
    except (OSError, ValueError, KeyError):
        return None


def _spawn_temporary(idle_s: float) -> dict:
    """Start the temporary API without waiting for it: the caller goes on with its own work meanwhile. The
    socket is bound here (loopback, a free port) and handed over, so no other process can take the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    env = dict(os.environ, PREFECT__SERVER_EPHEMERAL="1", PREFECT_UI_ENABLED="0", PREFECT__SERVER_FINAL="1")
    env.pop("PREFECT_API_URL", None)
    env.pop("AEFLOW_PID", None)         # not an orphan of this command for sweep_orphaned_servers: it outlives it
    log = open(server_file().parent / "temporary.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "flows.server", str(sock.fileno()), str(idle_s)],
                            pass_fds=[sock.fileno()], stdout=log, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    sock.close()
    log.close()
    info = {"pid": proc.pid, "api_url": f"http://127.0.0.1:{port}/api", "idle_s": idle_s, "started": time.time()}
    tmp = temporary_file().with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, temporary_file())
    return info


def start_temporary(idle_s: float | None = None) -> tuple[dict, bool]:
    """The kept temporary API, started (not waited for) when none lives: (its info, started now?)."""
    with _lock_file("temporary.start.lock") as f:        # two commands at once start one API, not two
        fcntl.flock(f, fcntl.LOCK_EX)
        if (info := temporary_api_info()) is not None:
            return info, False
        return _spawn_temporary(IDLE_S if idle_s is None else idle_s), True


def wait_healthy(info: dict, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(info["api_url"], timeout=2):
        if not _ours(info["pid"]):
            raise RuntimeError(f"the temporary Prefect API exited; see {server_file().parent / 'temporary.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the temporary Prefect API did not answer within {timeout:.0f} s; "
                               f"see {server_file().parent / 'temporary.log'}")
        time.sleep(0.1)


START_EARLY = False     # the command line sets it; then importing flows.pipelines starts the API (start_early)
_started_pid = None     # the temporary API this process started, to announce it
_used = False           # whether this process ran a flow on it


def start_early() -> None:
    """Start the kept temporary API, unless one is set or running, without waiting: called as a command
    imports its flows, so that the API's 5-25 s start overlaps the command's own imports (Prefect, torch) and
    checks. Only for the command line (START_EARLY): a notebook importing the flows starts nothing."""
    if START_EARLY and not os.environ.get("PREFECT_API_URL"):
        with _lock_file("temporary.lock") as users:          # not while an idle API is stopping itself
            fcntl.flock(users, fcntl.LOCK_SH)
            os.utime(users.name)
            info, started = start_temporary()
            if started:
                global _started_pid
                _started_pid = info["pid"]
                atexit.register(_stop_if_unused)


def _stop_if_unused() -> None:
    """At exit of a command that started the API early but ran no flow (a mistake found after the import):
    stop it again, unless another command is using it meanwhile."""
    if _started_pid is None or _used:
        return
    with _lock_file("temporary.lock") as users:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        if _ours(_started_pid):
            os.kill(_started_pid, signal.SIGTERM)
        _forget_temporary(_started_pid)


@contextmanager
def temporary_api(announce=None):
    """For one command: the kept temporary API's URL, started when none lives, held in use (it cannot stop
    itself) until the block ends. `announce(message)` hears when one is started and how long it stays."""
    users = _lock_file("temporary.lock")
    try:
        fcntl.flock(users, fcntl.LOCK_SH)
        os.utime(users.name)
        info, started = start_temporary()
        if (started or info["pid"] == _started_pid) and announce:
            announce(f"Prefect: started a temporary local API at {info['api_url']} for this and the next commands; "
                     f"it stops after {info['idle_s'] / 60:g} min unused (`aeflow server stop` stops it now, "
                     "`aeflow server start` keeps a full one with UI and schedules)")
        global _used
        _used = True
        wait_healthy(info)
        yield info["api_url"]
    finally:
        try:
            os.utime(users.name)                         # the idle period counts from the end of the last use
        finally:
            users.close()                                # releases the shared lock


def stop_temporary() -> bool:
    info = temporary_api_info()
    if info is None:
        temporary_file().unlink(missing_ok=True)
        return False
    try:
        os.kill(info["pid"], signal.SIGTERM)        # uvicorn finishes a start-up under way first: up to 10 s here
        for i in range(150):
            if not _ours(info["pid"]):
                break
            if i == 100:
                os.kill(info["pid"], signal.SIGKILL)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    temporary_file().unlink(missing_ok=True)
    return True


def _stop_when_idle(server, idle_s: float) -> None:
    """In the temporary API: stop once no command has used it for idle_s seconds."""
    path = server_file().parent / "temporary.lock"
    last_busy = time.time()
    while not server.should_exit:
        time.sleep(min(2.0, max(0.2, idle_s / 4)))
        with _lock_file("temporary.lock") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:                      # a command is using it
                last_busy = time.time()
                continue
            unused = time.time() - max(last_busy, path.stat().st_mtime)
            if unused >= idle_s:                         # under the exclusive lock: no command is about to use it
                _forget_temporary(os.getpid())
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} unused for {unused:.0f} s: stopping", flush=True)
                server.should_exit = True
                return


def _forget_temporary(pid: int) -> None:
    try:
        if json.loads(temporary_file().read_text())["pid"] == pid:
            temporary_file().unlink()
    except (OSError, ValueError, KeyError):
        pass


def serve_temporary(fd: int, idle_s: float) -> None:
    """The temporary API's process: Prefect's API app (as Prefect's own temporary server runs it: no UI, no
    scheduler services) on the loopback socket handed over as `fd`, until idle or SIGTERM."""
    import uvicorn

    sock = socket.socket(fileno=fd)
    server = uvicorn.Server(uvicorn.Config("prefect.server.api.server:create_app", factory=True,
                                           log_level="error", lifespan="on"))
    threading.Thread(target=_stop_when_idle, args=(server, idle_s), daemon=True).start()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} temporary API pid {os.getpid()}, stops after {idle_s:g} s unused",
          flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        _forget_temporary(os.getpid())


if __name__ == "__main__":
    serve_temporary(int(sys.argv[1]), float(sys.argv[2]))
