"""How long spatter's distance kernels take to compile for a GPU: the taps unrolled (as shipped) against the taps in
a loop over k at run time (robustkit.corruptions.spatter_triton.UNROLL_TAPS).

A machine's first spatter call compiles its Triton kernels (12.5 s for all of them on the H100 machine on
2026-11-27; Triton keeps them in its cache afterwards). Compiling needs no GPU: this compiles for a given
architecture (default sm_90, an H100) on this machine's CPU, each kernel once, with an empty Triton cache (a
temporary folder), and prints the seconds per kernel. Which variant runs faster is a GPU figure (bench_corruptions'
"taps in a loop" row).

    python bench/kernel_compile_times.py [--arch 90] [--cap 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability as a number [90: H100]")
    p.add_argument("--cap", type=float, default=20.0, help="the distance cap (spatter's: 20)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triton-cache-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache   # (read when Triton first compiles: nothing is compiled before this)
        try:
            import triton
            from triton.backends.compiler import GPUTarget
            from triton.compiler import ASTSource
        except ImportError as exc:
            print(f"error: this needs Triton with its ASTSource/GPUTarget compile API ({exc})", file=sys.stderr)
            return 2
        import triton.language as tl

        from robustkit.corruptions import spatter_triton as s

        @triton.jit
        def _set_up(x_ptr):   # compiled first, untimed: Triton's own set-up in the process is not a kernel's
            tl.store(x_ptr, 0.0)

        triton.compile(ASTSource(fn=_set_up, signature={"x_ptr": "*fp32"}, constexprs={}),
                       target=GPUTarget("cuda", args.arch, 32))
        print(f"# spatter's distance kernels compiled for sm_{args.arch} on this CPU, empty Triton cache; "
              f"triton {triton.__version__}; cap {args.cap:g}")
        print(f"{'kernel':24s} {'kind':9s} {'K':>3s} {'seconds':>8s}")
        totals = {}
        fn = s._stage_kernel
        for label, loop in (("taps unrolled", False), ("taps in a loop", True)):
            totals[label] = 0.0
            for stage, cost in enumerate(s.COSTS):
                k = int(args.cap // cost)
                types = dict(src_ptr="*u8" if stage == 0 else "*fp32", out_ptr="*fp32", cost_ptr="*fp32", H="i32",
                             W="i32", cap="fp32", far="fp32", k_last="i32")
                consts = dict(K=0 if loop else k, STAGE=stage, LOOP=loop, BLOCK_H=s.BLOCK_H, BLOCK_W=s.BLOCK_W)
                signature = {name: "constexpr" if name in consts else types[name] for name in fn.arg_names}
                constexprs = {(fn.arg_names.index(name),): value for name, value in consts.items()}
                start = time.perf_counter()
                triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                               target=GPUTarget("cuda", args.arch, 32), options={"num_warps": s.WARPS})
                took = time.perf_counter() - start
                totals[label] += took
                kind = ("axial", "diagonal", "knight")[stage]
                print(f"{label:24s} {kind:9s} {k:3d} {took:8.2f}", flush=True)
        print(f"in all: taps unrolled {totals['taps unrolled']:.2f} s, in a loop {totals['taps in a loop']:.2f} s "
              "(Triton's set-up in the process: before the first row, untimed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
