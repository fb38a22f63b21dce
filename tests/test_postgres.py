"""Many workers on one Prefect server backed by a real PostgreSQL: the database a team shares.

The test starts a PostgreSQL server of its own (Debian's `postgresql` binaries: initdb and pg_ctl, in a
temporary folder, on a free loopback port) and skips, saying why, where none is installed."""

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_schedule import AEFLOW, REPO, free_port, noisy_folder


def postgres_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    return found if isinstance(found, str) else (found[0] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of the test's own (trust auth, loopback only, no fsync); always stopped."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (Debian: apt install postgresql)")
    as_user = []
    root = Path(tempfile.mkdtemp(prefix="aeflow-pg-"))
    if os.geteuid() == 0:                    # PostgreSQL refuses to run as root: run it as its own user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), root / "data"
    try:
        subprocess.run(as_user + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                                  f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {getattr(e, 'stderr', b'') or e}")
    try:
        yield {"url": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", "port": port}
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def rows(pg: dict, sql: str) -> str:
    psql = postgres_bin("psql")
    return subprocess.run([psql, "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", "postgres", "-tAc", sql],
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def worker_logs(folder: Path) -> str:
    return "".join(p.read_text() for p in sorted(folder.glob("worker-*.log")))


@pytest.mark.prefect
def test_two_workers_share_a_server_on_postgresql(postgres, tmp_path):
    """Deployment, two process workers, two runs of one deployment at once (the output-folder lock makes the
    second wait, then skip what the first did), an incremental third run; every run recorded in PostgreSQL."""
    env = {**os.environ, "AEFLOW_OUTPUTS": str(tmp_path / "outputs"), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1", "PYTHONPATH": str(REPO),
           "COLUMNS": "1000"}
    env.pop("PREFECT_API_URL", None)
    run = lambda *a, **kw: subprocess.run(AEFLOW + list(a), env=env, cwd=REPO, capture_output=True, text=True,  # noqa: E731
                                          timeout=kw.get("timeout", 180))
    started = run("server", "start", "--port", str(free_port()), "--database", postgres["url"])
    assert started.returncode == 0, started.stdout + started.stderr
    workers = []
    try:
        assert f"database: PostgreSQL postgres@127.0.0.1:{postgres['port']}/postgres" in started.stdout, started.stdout
        src, dst = noisy_folder(tmp_path / "inbox", 4), tmp_path / "clean"
        made = run("schedule", "denoise", str(src), str(dst), "--cron", "0 2 * * *", "--name", "shared")
        assert made.returncode == 0, made.stdout + made.stderr
        for i in range(2):
            log = (tmp_path / f"worker-{i}.log").open("wb")
            workers.append(subprocess.Popen(AEFLOW + ["worker", "start", "--name", f"w{i}"], env=env, cwd=REPO,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        both = [subprocess.Popen(AEFLOW + ["schedule", "run", "shared", "--wait"], env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=240)[0] for p in both]
        assert all("Completed" in o for o in outs), outs
        # each run's own outcome, as its worker logged it: one did the work, the other waited, then skipped
        said = (f"{dst}: 4 processed, 0 skipped", f"{dst}: 0 processed, 4 skipped")
        deadline = time.monotonic() + 20                          # a worker's output may trail its run's end
        while not all(s in (logs := worker_logs(tmp_path)) for s in said) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert all(s in logs for s in said), logs[-3000:]
        assert sorted(p.name for p in dst.glob("*.png")) == [f"{i}.png" for i in range(4)]
        third = run("schedule", "run", "shared", "--wait", timeout=240)
        report = json.loads((dst / ".aeflow" / "report.json").read_text())
        assert "Completed" in third.stdout and report["counts"]["skipped"] == 4 and report["counts"]["processed"] == 0
        assert rows(postgres, "select count(*) from flow_run where state_name = 'Completed'") == "3"
        assert rows(postgres, "select count(*) from deployment") == "1"
    finally:
        for w in workers:
            try:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        run("server", "stop", timeout=60)
