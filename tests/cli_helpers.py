"""Helpers for tests that drive the command line in-process: invoke it, check one-line errors."""

from __future__ import annotations

from typer.testing import CliRunner

from robustkit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    """Exit status 2, one line starting with 'error: ', no traceback, every fragment in it (any case)."""
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1 and out.startswith("error: "), out
    for f in fragments:
        assert f.lower() in out.lower(), out
