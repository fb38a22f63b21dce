"""The command line explains itself, and lists the shipped models."""

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["denoise"], ["denoise", "train"], ["denoise", "run"], ["models"],
                                  ["demo"], ["server"], ["server", "start"]])
def test_every_command_has_help(args):
    result = runner.invoke(app, args + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 4


def test_models_lists_the_shipped_weights():
    result = runner.invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("skip-dae-gray", "skip-dae-color"):
        assert name in result.output
    from flows.catalog import PRETRAINED, describe

    assert describe(PRETRAINED / "mario-cvae")["takes"] == "14x28 grid, 259 column tokens, cond enemies, pipes, gaps"
    assert describe(PRETRAINED / "music-chorale-4bar-key")["takes"] == "4x64 grid, 48 tokens, cond key"


def test_a_model_is_listed_under_the_job_its_config_records():
    from flows.catalog import JOBS, job_of, shipped_models
    from models.checkpoints import read_config

    jobs = {}
    for folder in shipped_models():                   # each records its job, as its data would have told
        data = read_config(folder)["data"]
        assert job_of({"data": {k: v for k, v in data.items() if k != "job"}}) == data["job"]
        jobs[folder.name] = data["job"]
    assert (jobs["skip-dae-gray"], jobs["mario-vae"], jobs["music-melody-2bar"]) == ("denoise", "levels", "music")
    assert job_of({"data": {"job": "family", "mode": "x", "game": "y"}}) == "family"   # recorded: not guessed
    assert job_of({"data": {"ingest": "x"}}) == "denoise" and job_of({}) == "denoise"   # older folders
    result = runner.invoke(app, ["models"], terminal_width=200)
    cells = [[c.strip() for c in line.split("│")[1:4]] for line in result.output.splitlines() if line.startswith("│")]
    assert {name: job for name, job, source in cells if source == "shipped"} == jobs
    order = [JOBS.index(job) if job in JOBS else len(JOBS) for _, job, _ in cells]
    assert order == sorted(order)                                                        # job by job


def test_bad_sigma_is_a_clear_error():
    result = runner.invoke(app, ["denoise", "train", "--sigma", "loud"])
    assert result.exit_code != 0 and "0-55" in result.output


def test_level_units_and_ar_are_checked_before_any_work():
    result = runner.invoke(app, ["levels", "train", "--units", "rows"], terminal_width=200)
    assert result.exit_code != 0 and "--units" in result.output and "cells or columns" in result.output
    result = runner.invoke(app, ["levels", "train", "--ar", "2"], terminal_width=200)      # cells take no ar head
    assert result.exit_code != 0 and "--ar" in result.output and "cells take 0" in result.output


def test_input_errors_are_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "flows.cli", "denoise", "run", str(tmp_path / "missing"),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "error:" in r.stderr and "missing" in r.stderr and "input folder not found" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()          # nothing written for a job that cannot start


@pytest.mark.parametrize("args, says", [
    (["levels", "sample", "--cond", "enemies=lots", "OUT"], "LEVEL in none, few, some, many"),
    (["levels", "sample", "--model", "skip-dae-gray", "OUT"], "not a level model"),
    (["levels", "check", "--game", "nosuch", "."], "unknown game 'nosuch'"),
    (["music", "sample", "--key", "H", "OUT"], "key 'H'"),
    (["music", "sample", "--model", "mario-vae", "OUT"], "not a music model"),
    (["music", "stats", "--mode", "foo", "."], "melody or chorale"),
    (["music", "sample", "--program", "-1", "OUT"], "programs are 0-127"),
    (["denoise", "run", "--device", "cuda:x", ".", "OUT"], "auto, cpu, cuda or cuda:N"),
])
def test_mistakes_are_refused_in_a_line_before_prefect_starts(tmp_path, args, says):
    import subprocess
    import sys

    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "COLUMNS": "200"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert says in r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "temporary local API" not in r.stderr     # no flow was started
    assert not (tmp_path / "out").exists()


def test_model_names_resolve_exactly_or_by_a_unique_prefix():
    from flows.catalog import PRETRAINED, resolve_model

    assert resolve_model("music-melody-2bar", 0) == PRETRAINED / "music-melody-2bar"   # exact; also a prefix of -key
    assert resolve_model("music-melody-2bar-k", 0) == PRETRAINED / "music-melody-2bar-key"
    with pytest.raises(FileNotFoundError, match="ambiguous"):
        resolve_model("skip-dae", 1)
    with pytest.raises(FileNotFoundError, match="matches no model.*skip-dae-gray"):
        resolve_model("nonesuch", 1)
    with pytest.raises(FileNotFoundError, match="known music models") as e:     # only the job's own models listed
        resolve_model("nonesuch", 0, job="music")
    assert "music-chorale-4bar-key" in str(e.value) and "mario" not in str(e.value) and "skip-dae" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="matches no model"):
        resolve_model("skip-dae-gray-s", 0, job="levels")                     # a denoiser's prefix, for a level job



def _cli(*args, **env):
    """`aeflow ARGS` as a script runs it: stdout and stderr to pipes, nothing on stdin, COLUMNS=80 unless told."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=180, env={**os.environ, "COLUMNS": "80", **env})


@pytest.mark.parametrize("columns", ["80", "300"])
def test_an_error_naming_a_long_path_is_one_whole_line_in_a_pipe(tmp_path, columns):
    """rich wrapped errors at 80 columns (or $COLUMNS) when stderr was not a terminal: a path split mid-name cannot
    be copied nor grepped; and a folder named like rich markup lost its brackets."""
    deep = tmp_path / ("a-folder-name-long-enough-to-wrap-" * 6) / "[dim]scans[/dim] of 2024" / "missing"
    assert len(str(deep)) > 150
    r = _cli("denoise", "run", deep, tmp_path / "out", COLUMNS=columns)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), r.stderr          # exactly one line
    assert r.stderr == f"error: {deep}: input folder not found\n"


def test_an_argument_mistake_is_one_line_not_a_box():
    r = _cli("denoise", "run", "--batches", "0", ".", "out")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: Invalid value for '--batches'") and "IN_DIR OUT_DIR" in r.stderr
    assert not set(r.stderr) & set("╭│╰─")
    r = _cli("denoise", "run")
    assert r.returncode == 2 and r.stderr.startswith("error: Missing argument 'IN_DIR'") and \
        r.stderr.count("\n") == 1, r.stderr


def test_help_reads_in_dir_out_dir_and_flags_take_no_value():
    r = _cli("denoise", "run", "--help", COLUMNS="200")
    assert r.returncode == 0, r.stderr
    assert "denoise run [OPTIONS] IN_DIR OUT_DIR" in r.stdout and "{in_dir}" not in r.stdout
    assert "<bool>" not in r.stdout and "--ensemble" in r.stdout
    assert "<float range>" in r.stdout                                  # options that take a value keep their type
    for line in r.stdout.splitlines():
        if "--ensemble" in line or "--help" in line:
            assert "<" not in line, line
    r = _cli("levels", "train", "--help", COLUMNS="200")                # an on/off pair
    assert "--playable-only" in r.stdout and "<bool>" not in r.stdout
    r = _cli("levels", "interpolate", "--help", COLUMNS="200")                # click folds a long usage line
    assert "levels interpolate [OPTIONS] LEVEL_A LEVEL_B OUT_DIR" in " ".join(r.stdout.split())


def test_each_command_is_listed_in_one_unbroken_summary():
    """A group's --help lists each command by its help's first paragraph; typer keeps that paragraph's line
    breaks there (in rich mode), so a summary spread over lines breaks mid-sentence in the listing."""
    import inspect

    import typer

    def commands(group, path=()):
        for name, cmd in getattr(group, "commands", {}).items():
            yield " ".join(path + (name,)), cmd
            yield from commands(cmd, path + (name,))

    broken = [name for name, cmd in commands(typer.main.get_command(app))
              if "\n" in inspect.cleandoc(cmd.help or "").split("\n\n")[0]]
    assert broken == [], broken


# Mistakes the standard library can find: answered before torch (2 s) or Prefect (1-2 s) is imported.
@pytest.mark.parametrize("args", [
    ["denoise", "run", "MISSING", "OUT"],
    ["denoise", "run", ".", "./out"],                                   # the output inside the input
    ["denoise", "run", "--device", "cuda:x", ".", "OUT"],
    ["denoise", "run", "--task-runner", "celery", ".", "OUT"],
    ["denoise", "run"],
    ["denoise", "train", "--sigma", "loud"],
    ["denoise", "train", "--widths", "8,x"],
    ["schedule", "denoise", "MISSING", "OUT", "--cron", "0 2 * * *"],
    ["levels", "train", "--units", "rows"],
    ["levels", "check", "--game", "nosuch", "."],
    ["levels", "check", "--mode", "wide", "."],
    ["levels", "sample", "--n", "0", "OUT"],
    ["music", "train", "--condition", "tempo"],
    ["music", "stats", "--mode", "foo", "."],
    ["music", "stats", "MISSING"],
    ["music", "sample", "--program", "-1", "OUT"],
    ["anomaly", "series", "train", "MISSING"],
    ["anomaly", "series", "train", "--long-gaps", "fill", "."],
    ["anomaly", "series", "score", "MISSING", "OUT"],
    ["anomaly", "traffic", "score", "MISSING", "OUT"],
    ["nosuch"],
])
def test_argument_mistakes_answer_before_torch_or_prefect_is_imported(tmp_path, args):
    args = [tmp_path / "missing" if a == "MISSING" else tmp_path / "out" if a == "OUT" else a for a in args]
    r = _cli(*args, PYTHONPROFILEIMPORTTIME="1")                         # -X importtime: every import, on stderr
    assert r.returncode == 2, r.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "typer" in imported and not imported & {"torch", "prefect"}, sorted(imported & {"torch", "prefect"})
    errors = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert not (tmp_path / "out").exists()


def test_help_is_answered_without_torch_or_prefect():
    for args in (["--help"], ["denoise", "run", "--help"], ["levels"], ["anomaly", "series", "score", "--help"]):
        r = _cli(*args, PYTHONPROFILEIMPORTTIME="1")
        imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
        assert "Usage" in r.stdout and not imported & {"torch", "prefect"}, args


@pytest.mark.prefect
def test_a_table_piped_is_not_cut(tmp_path):
    """`music stats` into a pipe: rich laid the table out for 80 columns (or $COLUMNS), folding the file name over
    13 lines and cutting headings to "pcs/b…"; a pipe now gets each row whole."""
    import mido

    name = "a-melody-whose-file-name-is-longer-than-any-terminal-" + "x" * 90 + ".mid"
    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    mid.tracks.append(mido.MidiTrack([m for n in (60, 62, 64, 65, 67, 69, 71, 72) * 2 for m in (
        mido.Message("note_on", note=n, velocity=80, time=0), mido.Message("note_off", note=n, velocity=0, time=480))]))
    (tmp_path / "in").mkdir()
    mid.save(tmp_path / "in" / name)
    r = _cli("music", "stats", tmp_path / "in")
    assert r.returncode == 0, r.stdout + r.stderr
    header = next(line for line in r.stdout.splitlines() if "file" in line)
    for head in ("bars", "notes", "empty bars", "pcs/bar", ">= 8th", "in scale", "range", "interval", "key"):
        assert f" {head} " in header, header
    row = next(line for line in r.stdout.splitlines() if "a-melody" in line)
    assert name in row and row.rstrip("│ ").endswith("C"), row          # the whole name, and the key at the end
    assert "…" not in r.stdout and "1 read, 0 failed of 1 files" in r.stdout


@pytest.mark.prefect
def test_a_run_with_nothing_to_do_imports_no_torch(tmp_path):
    """A re-run that finds every output up to date plans, reports and ends without torch, a model or a batch
    task: about a second of each command's start (3.9 s -> 1.7 s with a server, bench/overhead.py --idle)."""
    import numpy as np
    from PIL import Image

    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48), np.uint8)).save(src / f"{i}.png")
    first = _cli("denoise", "run", src, dst)
    assert first.returncode == 0 and "2 processed" in first.stdout, first.stdout + first.stderr
    again = _cli("denoise", "run", src, dst, PYTHONPROFILEIMPORTTIME="1")
    imported = {line.rsplit("|", 1)[1].strip() for line in again.stderr.splitlines() if line.startswith("import time:")}
    assert again.returncode == 0 and "0 processed, 2 skipped" in again.stdout, again.stdout
    assert "prefect" in imported and "torch" not in imported
