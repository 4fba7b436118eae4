"""The Triton JPEG kernels (robustkit/corruptions/jpeg_triton.py) equal the torch-ops round trip bit for bit.

On the CPU the kernels run in Triton's interpreter (tests/triton_interpreter.py). Compared against the torch path
(itself equal to Pillow: tests/test_jpeg.py) and, for the real images, against Pillow directly. tests/test_gpu.py
compares them on CUDA.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_jpeg import cifar_images, pillow_jpeg
from triton_interpreter import compile_for_h100, run_interpreted

from robustkit.corruptions import jpeg, jpeg_triton
from robustkit.corruptions.presets import CIFAR_10_C, IMAGENET_C

pytestmark = pytest.mark.skipif(jpeg_triton.triton is None, reason="Triton is not installed")


def test_kernels_equal_the_torch_path_and_pillow(cifar_folder, tmp_path):
    real = cifar_images(cifar_folder, per_class=1)[:2]   # 2 real CIFAR-10 images (interpreting is slow)
    qualities = sorted(set(CIFAR_10_C["jpeg_compression"]) | set(IMAGENET_C["jpeg_compression"]))   # (1, 100: below)
    # float inputs on and between 8-bit levels: k / 255 and (k + 1/2) / 255 (float32 x * 255 lands on some
    # k + 1/2 exactly: ties, rounded to even), and values outside [0, 1]
    k = torch.arange(256, dtype=torch.float64)
    grid = torch.cat([k / 255, (k + 0.5) / 255]).float()
    grid = torch.cat([grid, torch.tensor([-0.3, 1.7, 0.0, 1.0] * 32)])
    ties = grid * 255
    assert int((ties - ties.floor() == 0.5).sum()) > 100   # the rounding of ties is exercised
    shuffled = grid[torch.randperm(grid.numel(), generator=torch.Generator().manual_seed(0))]
    edgy = shuffled.repeat(6)[: 3 * 16 * 40].view(1, 3, 16, 40)
    g = torch.Generator().manual_seed(1)
    images = {
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
    cases = {f"{name} q{q}": (x, q, levels) for name, (x, qs, levels) in images.items() for q in qs}
    got = run_interpreted("robustkit.corruptions.jpeg_triton:roundtrip", cases, tmp_path)
    assert set(got) == set(cases)
    differ = {}
    for key, (x, q, levels) in cases.items():
        want = jpeg.jpeg_roundtrip_u8(x, q) if levels else jpeg.jpeg_roundtrip(x, q)
        if got[key].dtype != want.dtype or not torch.equal(got[key], want):
            differ[key] = (str(got[key].dtype), int((got[key] != want).sum()))
    assert not differ, f"the Triton kernels differ from the torch path (dtype, values differing): {differ}"
    for q in qualities:   # the reference itself, for the real images
        ours = torch.round(got[f"cifar q{q}"] * 255).to(torch.uint8)
        assert torch.equal(ours, pillow_jpeg(real, q)), q


def test_kernels_compile_for_an_h100_without_one():
    mcu, colour = jpeg_triton._colour_ints()
    ints = dict(H="i32", W="i32", RH="i32", RW="i32")
    mcu_types = dict(y_ptr="*u8", c_ptr="*u8", fdct_ptr="*i32", idct_ptr="*i32", q_ptr="*i32", MCU_COLS="i32",
                     MCUS="i32", **ints)
    compile_for_h100(jpeg_triton._mcu_kernel, dict(mcu_types, x_ptr="*fp32"), dict(mcu, LEVELS=False),
                     jpeg_triton.MCU_WARPS)
    compile_for_h100(jpeg_triton._mcu_kernel, dict(mcu_types, x_ptr="*fp64"), dict(mcu, LEVELS=True),
                     jpeg_triton.MCU_WARPS)
    compile_for_h100(jpeg_triton._colour_kernel,
                     dict(y_ptr="*u8", c_ptr="*u8", lut_ptr="*fp32", out_ptr="*fp32", TILES_H="i32", **ints),
                     dict(colour, BLOCK_H=8, BLOCK_W=64), jpeg_triton.COLOUR_WARPS)


def test_a_kernel_failure_falls_back_to_the_torch_path_with_one_warning(monkeypatch):
    """Where Triton cannot build the kernels (an old or broken install), jpeg_compression still computes,
    by the torch path, and says so once."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("PassManager::run failed\nmore lines")

    monkeypatch.setattr(jpeg_triton, "usable", lambda x: True)   # as if on CUDA
    monkeypatch.setattr(jpeg_triton, "roundtrip", broken)
    monkeypatch.setattr(jpeg_triton.KERNELS, "failed", None)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first, second = jpeg.jpeg_roundtrip(x, 50), jpeg.jpeg_roundtrip(x, 50)
    assert len(calls) == 1 and len(seen) == 1
    assert "jpeg_compression: the Triton kernels failed (RuntimeError: PassManager::run failed)" in str(seen[0].message)
    monkeypatch.setattr(jpeg_triton.KERNELS, "failed", "off")
    assert torch.equal(first, second) and torch.equal(first, jpeg.jpeg_roundtrip(x, 50))


def test_cpu_images_take_the_torch_path():
    x = torch.rand(1, 3, 8, 8)
    assert not jpeg_triton.usable(x)
    assert jpeg_triton.try_roundtrip(x, 50) is None
