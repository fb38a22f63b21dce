"""The `aeflow` command line: the root app and its error handling; each command group is a module here. Heavy
imports (torch, Prefect) happen inside commands so `--help` is instant."""

from __future__ import annotations

import re
import sys

import typer
from rich.markup import escape
from rich.table import Column, Table

from flows.cli import anomaly, denoise, family, latent, levels, music, schedule, server
from flows.cli.common import _run_flow
from flows.cli.denoise import _db, print_report
from flows.progress import err, out


def _readable_help() -> None:
    """typer 0.2x writes `--refresh <bool>` for a flag (which takes no value) and `{in_dir} {out_dir}` in the usage
    line; write `--refresh` and `IN_DIR OUT_DIR` (`[NAME]` when optional), as click and the README do. Error hints
    follow: "Missing argument 'IN_DIR'"."""
    from typer.core import TyperArgument, TyperOption

    if not hasattr(TyperOption, "display_type_rich"):     # an older typer: click's metavars read so already
        return
    typed = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag or self.count else typed(self, ctx)

    def get_usage_pieces(self, ctx):
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return [name if self.required else f"[{name}]"]

    TyperOption.display_type_rich = display_type_rich
    TyperArgument.display_name_raw = property(lambda self: self.metavar or self.name.upper())
    TyperArgument.get_usage_pieces = get_usage_pieces


_readable_help()
# a crash's traceback in rich's box is cut at 80 columns in a log file: plain Python there
app = typer.Typer(help="aeflow: autoencoder pipelines as cached Prefect flows. Start with `aeflow demo`.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=sys.stderr.isatty())
app.add_typer(denoise.app, name="denoise")
app.add_typer(server.app, name="server")
app.add_typer(schedule.app, name="schedule")
app.add_typer(server.worker_app, name="worker")
app.add_typer(music.app, name="music")
app.add_typer(levels.app, name="levels")
app.add_typer(family.app, name="family")
app.add_typer(latent.app, name="latent")
app.add_typer(anomaly.app, name="anomaly")


# a mistake in what the user asked for: one line and exit 2 (raised by the checks and by the flows)
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError, ConnectionError)


def main() -> None:
    """Errors about the user's input (a missing folder, an unknown model, a bad file) and argument mistakes
    print one line and exit 2; AEFLOW_DEBUG=1 shows the traceback instead."""
    import gc
    import os

    from flows import server

    ranks = int(os.environ.get("WORLD_SIZE", 1)) > 1     # one of the processes of a data-parallel run
    if ranks:
        from models.distributed import die_with_launcher, serve

        die_with_launcher()
        if int(os.environ.get("RANK", 0)) > 0:            # ranks other than 0 only train, what rank 0 sends them
            try:
                sys.exit(serve())
            except USER_ERRORS as e:
                error(f"rank {os.environ['RANK']}: {e}")
                sys.exit(2)
    server.START_EARLY = True          # a command that imports its flows starts the Prefect API meanwhile
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError      # typer 0.2x bundles click
    except ImportError:
        from click.exceptions import ClickException, NoArgsIsHelpError

    try:
        code = app(standalone_mode=False)        # click's errors come back here instead of as a box at 80 columns
    except NoArgsIsHelpError:                    # `aeflow denoise`: the help was printed
        code = 2
    except ClickException as e:                  # argument mistakes (usage 2), as click numbers them
        usage = e.ctx.get_usage() if getattr(e, "ctx", None) else ""        # "Usage: aeflow denoise run ..."
        error(f"{e.format_message().rstrip('.')}; u{usage[1:]}" if usage else e.format_message())
        code = e.exit_code
    except typer.Abort:
        error("aborted")
        code = 1
    except USER_ERRORS as e:
        if os.environ.get("AEFLOW_DEBUG"):
            raise
        error(str(e))
        code = 2
    except Exception as e:
        # a condition with its own exit status (flows.denoise: 3 folder locked; 4 disk full, wherever a write
        # ran out of room: outputs, checkpoints, model folders): one line too
        from models.checkpoints import storage_error

        status = getattr(e, "exit_status", None)
        if not isinstance(status, int) and storage_error(e) is not None:
            status = 4
        if not isinstance(status, int) or os.environ.get("AEFLOW_DEBUG"):
            raise
        error(str(e))
        code = status
    finally:
        # The interpreter's last garbage collection walks every object torch and Prefect created: 0.5-1 s
        # per command. Frozen objects are skipped; exit handlers (Prefect's log flush, temporary API) still run.
        gc.freeze()
    code = code if isinstance(code, int) else 0
    if ranks and code == 0:                      # release the other ranks (on a failure the launcher stops them)
        from models.distributed import finish

        finish()
    sys.exit(code)


def error(message: str) -> None:
    """One line on stderr, whatever it goes to: a terminal folds it on screen, a file or a pipe gets it whole
    (a path split over two lines cannot be copied, nor found by grep)."""
    one_line = re.sub(r"\s*\n\s*", " ", message.strip())
    err.print(f"[bold red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True)


@app.command("models")
def list_models():
    """List shipped and trained models with their metrics, job by job."""
    from flows.catalog import JOBS, describe, shipped_models, trained_models

    rows = [describe(folder) for folder in shipped_models() + trained_models()]
    rows.sort(key=lambda d: JOBS.index(d["job"]) if d["job"] in JOBS else len(JOBS))     # stable: shipped first
    params = lambda d: f"{d['parameters']:,} parameters" if d["parameters"] else ""  # noqa: E731
    if out.width < 120:                          # a table would cut names (typed after --model): a list instead
        out.print("[bold]models[/] (--model NAME)")
        for d in rows:
            out.print(f"[bold]{d['name']}[/] ({d['source']} {d['job']} {d['kind']})", soft_wrap=True)
            out.print("    " + ", ".join(v for v in (d["takes"], d["validation"], params(d),
                                                     f"{d['steps']} steps" if d["steps"] else "") if v))
        return
    table = Table("name", "job", "source", "kind", "takes", Column("params", justify="right"), "validation",
                  Column("steps", justify="right"), title="models (--model NAME)")
    for d in rows:
        table.add_row(d["name"], d["job"], d["source"], d["kind"], d["takes"], f"{d['parameters']:,}" if d["parameters"] else "",
                      d["validation"], str(d["steps"] or ""))
    out.print(table)


@app.command("demo")
def demo(sigma: float = typer.Option(25.0, "--sigma", min=0, max=255, help="Noise added to the demo photos (0-255 scale).")):
    """Add noise to a few of scikit-image's photos, denoise them with the shipped models, show the gain."""
    from flows.pipelines import demo_flow

    result = _run_flow(demo_flow, sigma=sigma)
    report = result["denoise"]
    table = Table("image", "noisy PSNR", "denoised PSNR", "SSIM", "model")
    for r in report["images"]:
        if "psnr" in r:
            table.add_row(r["file"], _db(r["input_psnr"]), _db(r["psnr"]), f"{r['ssim']:.3f}", r.get("model", ""))
    out.print(table)
    print_report(report)
    out.print("[dim]The gray photos are new to the gray model (trained on Train400). astronaut, coffee and chelsea "
              "were in the colour model's training set (optimistic figures); grace_hopper (from matplotlib) was not.[/]")
    lv, mu = result["levels"], result["music"]
    w, full = lv["windows"], lv["level"]
    out.print(f"[bold]levels[/]: {w['delivered']['playable']} playable Mario windows and a "
              f"{full['shape'][1]}-column level ({sum(w['rejected'].values()) + sum(full['rejected'].values())} "
              f"samples rejected and redrawn: unplayable, broken pipes, copies or repeats); contact sheet "
              f"{lv['contact_sheet']}")
    mel, ch = mu["melodies"], mu["chorales"]
    out.print(f"[bold]music[/]: {len(mel['clips'])} melodies and {len(ch['clips'])} four-part chorale phrases of "
              f"{mel['bars']} bars at {mel['tempo']:g} bpm (MIDI + piano-roll PNG each) in {mel['out_dir']} and "
              f"{ch['out_dir']}")
