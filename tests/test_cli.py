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


def test_bad_sigma_is_a_clear_error():
    result = runner.invoke(app, ["denoise", "train", "--sigma", "loud"])
    assert result.exit_code != 0 and "0-55" in result.output
