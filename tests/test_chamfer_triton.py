"""The Triton chamfer distance (robustkit/corruptions/chamfer_triton.py) equals the torch path bit for bit.

On the CPU the kernels run in Triton's interpreter (tests/triton_interpreter.py), mostly with larger tiles than
shipped (the interpreter's cost is per program; the shipped tiles run one case, and compile in the last test);
tests/test_gpu.py compares them on CUDA.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_corruption_speedups import same_bits
from triton_interpreter import compile_for_h100, run_interpreted

from robustkit.corruptions import chamfer_triton, weather

pytestmark = pytest.mark.skipif(chamfer_triton.triton is None, reason="Triton is not installed")


def test_kernels_equal_the_torch_path(tmp_path):
    """As tests/test_corruption_speedups.py argues for the torch path: a single source in the middle of an 81 px
    image gives every displacement's distance with no border in reach, and sources in the corners of small images
    give displacements with every detour cut off; random maps of several densities and sizes, several caps."""
    g = torch.Generator().manual_seed(4)
    centre = torch.zeros(1, 1, 81, 81, dtype=torch.bool)
    centre[..., 40, 40] = True
    cases = {"centre": (centre, 20.0)}
    for vr, vc in ((0, 20), (13, 7), (20, 20)):   # (the interpreter costs ~0.15 s per program: few images)
        s = torch.zeros(4, 1, vr + 1, vc + 1, dtype=torch.bool)
        s[0, 0, 0, 0] = s[1, 0, 0, vc] = s[2, 0, vr, 0] = s[3, 0, vr, vc] = True
        cases[f"corners {vr}x{vc}"] = (s, 20.0)
    for h, w in ((32, 32), (61, 47), (5, 70), (1, 9)):
        cases[f"random {h}x{w}"] = (torch.rand(3, 1, h, w, generator=g) < torch.tensor([0.0, 0.01, 0.2]).view(3, 1, 1, 1),
                                    20.0)
    for cap in (5.0, 12.5, 31.0):
        cases[f"cap {cap}"] = (torch.rand(1, 1, 40, 50, generator=g) < 0.02, cap)
    cases["shipped tiles"] = (torch.rand(1, 1, 21, 45, generator=g) < 0.05, 20.0)
    big = dict(BLOCK_H=64, BLOCK_W=128)
    settings = {key: big for key in cases}
    settings["shipped tiles"] = dict(BLOCK_H=chamfer_triton.BLOCK_H, BLOCK_W=chamfer_triton.BLOCK_W)
    got = run_interpreted("robustkit.corruptions.chamfer_triton:distance", cases, tmp_path, settings)
    assert set(got) == set(cases)
    for key, (sources, cap) in cases.items():
        assert same_bits(got[key], weather.chamfer_distance(sources, cap)), key


def test_kernels_compile_for_an_h100_without_one():
    types = dict(src_ptr="*u8", out_ptr="*fp32", cost_ptr="*fp32", H="i32", W="i32", cap="fp32", far="fp32")
    for stage, cost in enumerate(chamfer_triton.COSTS):
        if stage:
            types["src_ptr"] = "*fp32"
        compile_for_h100(chamfer_triton._stage_kernel, dict(types),
                         dict(K=int(20.0 // cost), STAGE=stage, BLOCK_H=chamfer_triton.BLOCK_H,
                              BLOCK_W=chamfer_triton.BLOCK_W), chamfer_triton.WARPS)


def test_a_kernel_failure_falls_back_to_the_torch_path_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("failed to legalize operation")

    monkeypatch.setattr(chamfer_triton, "usable", lambda sources, cap: True)   # as if on CUDA
    monkeypatch.setattr(chamfer_triton, "distance", broken)
    monkeypatch.setattr(chamfer_triton.KERNELS, "failed", None)
    s = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0)) < 0.05
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first, second = weather.chamfer_distance(s, 20.0), weather.chamfer_distance(s, 20.0)
    assert len(seen) == 1 and "spatter: the Triton kernels failed (RuntimeError: failed to legalize" in str(seen[0].message)
    monkeypatch.setattr(chamfer_triton.KERNELS, "failed", "off")
    assert same_bits(first, second) and same_bits(first, weather.chamfer_distance(s, 20.0))
