"""Helpers for tests that drive the command line: invoke it in-process, check one-line errors, launch it
under torchrun (gloo, CPU processes)."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from robustkit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def plain_and_switched(args, switched, out_root, result_file: str, plain=()) -> tuple[dict, dict]:
    """Run the command ``args`` twice, with ``plain`` flags into ``out_root/plain`` and with ``switched`` into
    ``out_root/switched``; both must succeed. Returns the two runs' ``result_file`` JSON (e.g. corruptions.json)."""
    import json

    for name, flags in (("plain", plain), ("switched", switched)):
        res = invoke(*args, *flags, "--out", out_root / name)
        assert res.exit_code == 0, res.output
    return tuple(json.loads((out_root / name / result_file).read_text()) for name in ("plain", "switched"))


def assert_one_line_error(result, *fragments):
    """Exit status 2, one line starting with 'error: ', no traceback, every fragment in it (any case)."""
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1 and out.startswith("error: "), out
    for f in fragments:
        assert f.lower() in out.lower(), out


def torchrun_launch(args, nproc: int = 2, env: dict | None = None, script=None) -> tuple[list[str], dict]:
    """The command and environment of ``torchrun --standalone --nproc-per-node N -m robustkit ARGS`` (or
    ``SCRIPT ARGS``): one intra-op thread per process, collectives timing out after 120 s unless ``env`` says
    otherwise."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTKIT_DIST_TIMEOUT": "120", **(env or {})}
    target = ["-m", "robustkit"] if script is None else [str(script)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *target, *map(str, args)]
    return cmd, env


def torchrun(args, cwd, nproc: int = 2, env: dict | None = None, timeout: float = 600, script=None):
    """Run :func:`torchrun_launch`'s command to the end in ``cwd``; the completed process, output captured."""
    cmd, env = torchrun_launch(args, nproc, env, script)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
