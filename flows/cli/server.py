"""`aeflow server start|stop` and `aeflow worker start`: the Prefect server, and the workers that run schedules."""

from __future__ import annotations

from typing import Optional

import typer

from flows.progress import out

app = typer.Typer(help="A local Prefect server (API + UI) that every aeflow command then uses.",
                  no_args_is_help=True)
worker_app = typer.Typer(help="Workers that execute scheduled runs.", no_args_is_help=True)


@app.command("start")
def server_start(host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback needs --auth."),
                 port: int = typer.Option(4200, "--port"),
                 auth: Optional[str] = typer.Option(None, "--auth", help="user:password required on every API call but health."),
                 database: Optional[str] = typer.Option(
                     None, "--database", help="SQLAlchemy URL of the database, e.g. postgresql+asyncpg://user:pw@host:5432/prefect "
                                              "(many workers or hosts); default $PREFECT_SERVER_DATABASE_CONNECTION_URL, else SQLite under outputs/.")):
    """Start a Prefect server in the background (SQLite under outputs/ unless --database); later commands use it."""
    from flows.server import start

    info = start(host, port, auth, database)
    out.print(f"Prefect server running (pid {info['pid']}): UI {info['ui_url']}  API {info['api_url']}  "
              f"database: {info.get('database', '?')}", soft_wrap=True)


@app.command("stop")
def server_stop():
    """Stop the server started by `aeflow server start`."""
    from flows.server import stop

    out.print("stopped" if stop() else "no aeflow server was running")


@worker_app.command("start")
def worker_start(pool: str = typer.Option("aeflow", "--pool"), name: Optional[str] = typer.Option(None, "--name"),
                 limit: Optional[int] = typer.Option(
                     None, "--limit", min=1, help="Runs at a time on this worker (default: no limit, so one worker takes "
                                                  "every waiting run; 1 spreads a job split into runs over the hosts).")):
    """Run a process worker in the foreground (Ctrl-C stops it); several may run, on several hosts."""
    from flows.schedule import start_worker

    start_worker(pool, name, limit)
