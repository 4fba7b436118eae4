"""bench/gpu_check.sh on a machine without a GPU: valid bash, and a clear refusal instead of half a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_refuses_with_one_line(tmp_path):
    shared = tmp_path / "shared"
    (shared / "wheels").mkdir(parents=True)
    env = {**os.environ, "ROBUSTKIT_SHARED": str(shared), "PYTHON": sys.executable,
           "GPU_CHECK_LOG": str(tmp_path / "gpu.log"), "GPU_CHECK_OUT": str(tmp_path / "out")}
    res = subprocess.run(["bash", str(SCRIPT), "tests"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "torch sees no CUDA GPU here" in res.stdout and "Traceback" not in res.stdout + res.stderr
    assert "torch sees no CUDA GPU here" in (tmp_path / "gpu.log").read_text()

