"""The Triton JPEG kernels (robustkit/corruptions/jpeg_triton.py) equal the torch-ops round trip bit for bit.

On the CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, which has to be set before the
kernels are defined: so in a subprocess). Compared against the torch path (itself equal to Pillow:
tests/test_jpeg.py) and, for the real images, against Pillow directly. tests/test_gpu.py compares them on CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from robustkit.corruptions import jpeg, jpeg_triton
from robustkit.corruptions.presets import CIFAR_10_C, IMAGENET_C

from test_jpeg import cifar_images, pillow_jpeg

pytestmark = pytest.mark.skipif(jpeg_triton.triton is None, reason="Triton is not installed")

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import json, sys
import torch
from robustkit.corruptions import jpeg, jpeg_triton

data = torch.load(sys.argv[1])
out = {}
for name, (x, qualities, levels) in data.items():
    for q in qualities:
        got = jpeg_triton.roundtrip(x, q, levels=levels)
        want = jpeg.jpeg_roundtrip_u8(x, q) if levels else jpeg.jpeg_roundtrip(x, q)
        out[f"{name} q{q}"] = [got.dtype == want.dtype, int((got != want).sum()), got.cpu().numpy().tolist()]
json.dump(out, sys.stdout)
"""


def _interpreted(cases: dict, tmp_path: Path) -> dict:
    """Run the kernels on ``cases`` {name: (x, qualities, levels)} in Triton's interpreter: per case and quality,
    [same dtype as the torch path, number of values that differ from it, the kernels' output]."""
    torch.save(cases, tmp_path / "cases.pt")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "cases.pt")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_kernels_equal_the_torch_path_and_pillow(cifar_folder, tmp_path):
    real = cifar_images(cifar_folder, per_class=1)[:2]   # 2 real CIFAR-10 images (interpreting is slow)
    qualities = sorted(set(CIFAR_10_C["jpeg_compression"]) | set(IMAGENET_C["jpeg_compression"]) | {1, 100})
    # float inputs on and between 8-bit levels: k / 255 and (k + 1/2) / 255 (float32 x * 255 lands on some
    # k + 1/2 exactly: ties, rounded to even), and values outside [0, 1]
    k = torch.arange(256, dtype=torch.float64)
    grid = torch.cat([k / 255, (k + 0.5) / 255]).float()
    grid = torch.cat([grid, torch.tensor([-0.3, 1.7, 0.0, 1.0] * 32)])
    ties = grid * 255
    assert int((ties - ties.floor() == 0.5).sum()) > 100   # the rounding of ties is exercised
    levels_grid = grid[torch.randperm(grid.numel(), generator=torch.Generator().manual_seed(0))]
    edgy = levels_grid.repeat(6)[: 3 * 16 * 40].view(1, 3, 16, 40)
    g = torch.Generator().manual_seed(1)
    cases = {
        "cifar": (real.float() / 255, qualities, False),
        "levels-grid": (edgy, [50], False),
        # sizes that are not whole MCUs: the last row / column repeated (odd and even heights and widths)
        "21x37": (torch.rand(2, 3, 21, 37, generator=g), [1, 58, 100], False),
        "18x33": (torch.rand(1, 3, 18, 33, generator=g), [25], False),
        "3x6": (torch.rand(1, 3, 3, 6, generator=g), [80], False),
        # jpeg_roundtrip_u8 (the released ImageNet-C storage, quality 85): uint8 and float levels
        "u8": (real, [85], True),
        "float-levels-19x23": (torch.randint(0, 256, (1, 3, 19, 23), generator=g).float(), [85, 7], True),
    }
    got = _interpreted(cases, tmp_path)
    expected = {f"{name} q{q}" for name, (_, qs, _) in cases.items() for q in qs}
    assert set(got) == expected
    differ = {key: (same_dtype, n) for key, (same_dtype, n, _) in got.items() if n or not same_dtype}
    assert not differ, f"the Triton kernels differ from the torch path (dtype same, values differing): {differ}"
    for q in qualities:   # the reference itself, for the real images
        ours = torch.round(torch.tensor(got[f"cifar q{q}"][2]) * 255).to(torch.uint8)
        assert torch.equal(ours, pillow_jpeg(real, q)), q


def test_a_kernel_failure_falls_back_to_the_torch_path_with_one_warning(monkeypatch):
    """Where Triton cannot build the kernels (an old or broken install), jpeg_compression still computes,
    by the torch path, and says so once."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("PassManager::run failed\nmore lines")

    monkeypatch.setattr(jpeg_triton, "usable", lambda x: True)   # as if on CUDA
    monkeypatch.setattr(jpeg_triton, "roundtrip", broken)
    monkeypatch.setattr(jpeg_triton, "_failed", None)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first, second = jpeg.jpeg_roundtrip(x, 50), jpeg.jpeg_roundtrip(x, 50)
    assert len(calls) == 1 and len(seen) == 1
    assert "Triton kernels failed (RuntimeError: PassManager::run failed)" in str(seen[0].message)
    monkeypatch.setattr(jpeg_triton, "_failed", "off")
    assert torch.equal(first, second) and torch.equal(first, jpeg.jpeg_roundtrip(x, 50))


def test_cpu_images_take_the_torch_path():
    x = torch.rand(1, 3, 8, 8)
    assert not jpeg_triton.usable(x)   # the CPU: the torch path
    assert jpeg_triton.try_roundtrip(x, 50) is None


def test_kernels_compile_for_an_h100_without_one():
    """The interpreter runs the kernels as Python; whether Triton's compiler accepts them is a separate question,
    answered here without a GPU: both kernels, as the product launches them, compiled to an sm_90 (H100) cubin."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:   # another Triton layout: the CUDA test (tests/test_gpu.py) still covers it
        pytest.skip(f"this Triton has no ASTSource/GPUTarget ({exc})")
    mcu, colour = jpeg_triton._colour_ints()
    ints = dict(H="i32", W="i32", RH="i32", RW="i32")
    kernels = [
        (jpeg_triton._mcu_kernel, dict(x_ptr="*fp32", y_ptr="*u8", c_ptr="*u8", fdct_ptr="*i32", idct_ptr="*i32",
                                       q_ptr="*i32", MCU_COLS="i32", MCUS="i32", **ints),
         dict(mcu, LEVELS=False), jpeg_triton.MCU_WARPS),
        (jpeg_triton._mcu_kernel, dict(x_ptr="*fp64", y_ptr="*u8", c_ptr="*u8", fdct_ptr="*i32", idct_ptr="*i32",
                                       q_ptr="*i32", MCU_COLS="i32", MCUS="i32", **ints),
         dict(mcu, LEVELS=True), jpeg_triton.MCU_WARPS),
        (jpeg_triton._colour_kernel, dict(y_ptr="*u8", c_ptr="*u8", lut_ptr="*fp32", out_ptr="*fp32", TILES_H="i32",
                                          **ints),
         dict(colour, BLOCK_H=8, BLOCK_W=64), jpeg_triton.COLOUR_WARPS),
    ]
    for fn, types, consts, warps in kernels:
        signature = {name: "constexpr" if name in consts else types[name] for name in fn.arg_names}
        constexprs = {(fn.arg_names.index(name),): value for name, value in consts.items()}
        try:
            compiled = jpeg_triton.triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                                  target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
        except TypeError as exc:   # an older compile() signature
            pytest.skip(f"this Triton's compile() differs ({exc})")
        assert compiled.asm["cubin"], fn.__name__
