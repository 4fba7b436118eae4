"""Helpers for the tests of robustkit's Triton kernels on a machine without a GPU.

* :func:`run_interpreted`: call a kernel-launching function in Triton's interpreter (``TRITON_INTERPRET=1``, which
  must be set before the kernels are defined: so in a subprocess), on CPU tensors.
* :func:`compile_for_h100`: compile a kernel with Triton's real compiler for an sm_90 GPU (no GPU needed), which
  the interpreter does not prove.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import importlib, sys
import torch
module, name = sys.argv[1].split(":")
module = importlib.import_module(module)
fn = getattr(module, name)
cases, settings = torch.load(sys.argv[2])
out = {}
for key, args in cases.items():
    for attr, value in settings.get(key, {}).items():
        setattr(module, attr, value)
    out[key] = fn(*args)
torch.save(out, sys.argv[3])
"""


def run_interpreted(function: str, cases: dict[str, tuple], tmp_path: Path,
                    settings: dict[str, dict] | None = None) -> dict[str, torch.Tensor]:
    """``{key: function(*args)}`` for ``cases`` ``{key: args}``, computed in Triton's interpreter in a subprocess;
    ``function``: ``"module:name"``. ``settings``: per case, module attributes to set first (e.g. larger tiles:
    the interpreter's cost is per program), kept for the cases after it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save((cases, settings or {}), tmp_path / "cases.pt")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", _SCRIPT, function, str(tmp_path / "cases.pt"),
                           str(tmp_path / "out.pt")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


def compile_for_h100(fn, types: dict[str, str], consts: dict, warps: int) -> None:
    """Compile the ``@triton.jit`` kernel ``fn`` for an sm_90 (H100) GPU: ``types`` of its runtime arguments
    (``"*fp32"``, ``"i32"``, ...), values of its ``tl.constexpr`` ones. Fails the test if Triton refuses it;
    skips where this Triton's compile API is another one."""
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:   # another Triton layout: the CUDA tests (tests/test_gpu.py) still cover it
        pytest.skip(f"this Triton has no ASTSource/GPUTarget ({exc})")
    signature = {name: "constexpr" if name in consts else types[name] for name in fn.arg_names}
    constexprs = {(fn.arg_names.index(name),): value for name, value in consts.items()}
    try:
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    except TypeError as exc:   # an older ASTSource signature
        pytest.skip(f"this Triton's ASTSource differs ({exc})")
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    assert compiled.asm["cubin"], fn.__name__
