"""bench/traffic_kernels.py: the predicted traffic of the corruptions with Triton kernels (run in a subprocess: it
switches Triton to its interpreter before the kernels are defined)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustkit.corruptions import jpeg_triton

pytestmark = pytest.mark.skipif(jpeg_triton.triton is None, reason="Triton is not installed")

REPO = Path(__file__).resolve().parents[1]


def test_kernels_traffic_is_counted_and_below_the_torch_ops(tmp_path):
    out = tmp_path / "traffic.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "traffic_kernels.py"), "--images", "1", "--size", "32",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"jpeg_compression", "glass_blur", "spatter"}
    from robustkit.corruptions import glass_triton, spatter_triton
    from robustkit.corruptions.presets import params

    _, delta, passes = params("imagenet-c", "glass_blur", 3)
    # each kernel launch was counted: jpeg's two kernels, glass's passes, spatter's four launch functions with the
    # hysteresis passes it ran (a whole number of checks of 8)
    assert rows["jpeg_compression"]["kernels_mb"] == pytest.approx(jpeg_triton.traffic_bytes((1, 3, 32, 32)) / 1e6)
    assert rows["glass_blur"]["kernels_mb"] == pytest.approx(
        glass_triton.traffic_bytes((1, 3, 32, 32), 4, delta, passes) / 1e6)
    hysteresis = (rows["spatter"]["kernels_mb"] * 1e6 - spatter_triton.traffic_bytes((1, 1, 32, 32), 0)) / (32 * 32)
    assert hysteresis == pytest.approx(round(hysteresis)) and round(hysteresis) % 8 == 0 and hysteresis >= 8
    for name, row in rows.items():
        assert row["total_mb"] < row["before_mb"], name
