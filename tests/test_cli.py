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

