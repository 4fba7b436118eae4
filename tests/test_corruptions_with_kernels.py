"""``corrupt()`` with robustkit's Triton kernels equals ``corrupt()`` with the torch ops, end to end: the kernels'
own tests check each kernel; this checks how the corruptions call them (dtypes, the float first blur of glass_blur,
spatter's water tail, the seeded draws around them). The kernels run in Triton's interpreter on CPU tensors, in a
subprocess, with their CUDA-only gate opened (``_triton.on_gpu``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustkit.corruptions import _triton

pytestmark = pytest.mark.skipif(_triton.triton is None, reason="Triton is not installed")

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import json, torch
from robustkit.corruptions import _triton, corrupt, glass_triton, jpeg_triton, spatter_triton

_triton.on_gpu = lambda t: True   # as on CUDA
spatter_triton.BLOCK_H, spatter_triton.BLOCK_W = 64, 128   # fewer programs to interpret; the same numbers
modules = {"jpeg_compression": jpeg_triton, "glass_blur": glass_triton, "spatter": spatter_triton}
launches = {name: 0 for name in modules}
for name, module in modules.items():
    def counted(launch, *args, _run=module.KERNELS.run, _name=name, **kwargs):
        launches[_name] += 1
        return _run(launch, *args, **kwargs)
    module.KERNELS.run = counted
g = torch.Generator().manual_seed(0)
images = {"32": torch.rand(2, 3, 32, 32, generator=g), "odd": torch.rand(1, 3, 27, 37, generator=g)}
cases = [("jpeg_compression", "imagenet-c", 2), ("jpeg_compression", "cifar-10-c", 5),
         ("spatter", "imagenet-c", 3), ("spatter", "cifar-10-c", 1)]
cases += [("glass_blur", preset, s) for preset in ("imagenet-c", "cifar-10-c") for s in range(1, 6)]
differ, ran, total = [], 0, 0
for name, preset, severity in cases:
    for key, x in images.items():
        if name == "spatter" and key == "odd":
            continue
        total += 1
        module = modules[name]
        before = launches[name]
        fast = corrupt(x, name, severity, preset, seed=3)
        ran += launches[name] > before and module.KERNELS.failed is None
        module.KERNELS.enabled = False
        slow = corrupt(x, name, severity, preset, seed=3)
        module.KERNELS.enabled = True
        if not torch.equal(fast, slow):
            differ.append([name, preset, severity, key, int((fast != slow).sum())])
print(json.dumps({"cases": total, "ran": ran, "differ": differ, "launches": launches}))
"""


def test_corrupt_with_the_kernels_equals_corrupt_with_the_torch_ops(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ran"] == out["cases"], out   # every call went through the kernels, none fell back
    assert not out["differ"], f"corrupt() differs with the kernels: {out['differ']}"
