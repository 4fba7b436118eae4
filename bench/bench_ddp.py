"""Scaling of training under torchrun: images/s with 1 process and with N processes, in one run.

Every row is ``robustkit train`` as a user runs it (a subprocess: plain ``python -m robustkit`` for one
process, ``torchrun --standalone --nproc-per-node N -m robustkit`` for N) on the same model, global batch,
data and steps; the figure is labeled images per second over the timed steps (after the warm-up steps,
from the run's metrics windows: start-up, evaluation and checkpoints are outside). Next to each torchrun
row: the same launch with ``--no-sync-bn`` (plain DDP, BatchNorm per process), which shows what the
synchronised random-width BatchNorm costs, and the speed-up over one process.

On a CPU the cores are shared out: one process gets all ``--threads`` intra-op threads, each of N processes
``threads / N`` (gloo). On one GPU only ``--nproc 1`` makes sense (say so when quoting the figure); N GPUs
get one process each (NCCL).

    python bench/bench_ddp.py                                  # CPU, 2 cores: 1 vs 2 processes, baseline + GradAug
    python bench/bench_ddp.py --device cuda --nproc 1 --arch wrn-28-2 --steps 100 --warmup 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, header, read_metrics, resolve_data, setup_device, table, timed_seconds  # noqa: E402

METHODS = {"baseline": ["--method", "baseline"], "gradaug": ["--method", "gradaug"],
           "gradaug-semi": ["--method", "gradaug", "--semi"]}


def run(args, method: str, nproc: int, sync_bn: bool, out: Path, device: str) -> float:
    """Labeled images/s of one training launch over its timed steps."""
    total = args.warmup + args.steps
    flags = ["train", "--dataset", args.spec, "--labels", str(args.labels), "--arch", args.arch,
             "--batch-size", str(args.batch_size), "--steps", str(total), "--log-every", str(args.warmup),
             "--eval-every", str(total), "--eval-limit", "100", "--device", device, "--no-progress",
             "--out", str(out), *METHODS[method]]
    threads = max(1, args.threads // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    if nproc == 1 and not args.torchrun_one:
        cmd = [sys.executable, "-m", "robustkit", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "robustkit", *flags, *([] if sync_bn else ["--no-sync-bn"])]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return args.steps * args.batch_size / timed_seconds(read_metrics(out), args.warmup, total)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="digits | folder:PATH [digits]")
    p.add_argument("--arch", default="wrn-16-2")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over the processes)")
    p.add_argument("--labels", type=int, default=250)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--nproc", default="2", help="process counts to compare with one process, e.g. 2 or 2,4")
    p.add_argument("--methods", default="baseline,gradaug")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads in all [all cores]")
    p.add_argument("--torchrun-one", action="store_true", help="run the 1-process row under torchrun too")
    args = p.parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    args.threads = args.threads or os.cpu_count() or 1
    args.spec, described = resolve_data(args.data)
    counts = [int(n) for n in args.nproc.split(",") if n.strip()]
    if device.type == "cuda":
        import torch

        if max(counts, default=1) > torch.cuda.device_count():
            print(f"note: {torch.cuda.device_count()} GPU(s): only --nproc up to that many is measured", file=sys.stderr)
            counts = [n for n in counts if n <= torch.cuda.device_count()]
    header(f"training under torchrun ({args.arch}, global batch {args.batch_size}, {described}, "
           f"{args.threads} CPU threads in all)", device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            one = run(args, method, 1, False, Path(tmp) / f"{method}-1", str(device.type))
            rows.append([method, "1", "-", f"{one:,.1f}", "1.00x"])
            print(f"{method}, 1 process: {one:,.1f} labeled images/s", flush=True)
            for n in counts:
                for sync in (True, False) if n > 1 else (True,):
                    ips = run(args, method, n, sync, Path(tmp) / f"{method}-{n}-{sync}", str(device.type))
                    rows.append([method, str(n), ("on" if sync else "off") if n > 1 else "-", f"{ips:,.1f}",
                                 f"{ips / one:.2f}x"])
                    print(f"{method}, {n} processes, sync-bn {'on' if sync else 'off'}: {ips:,.1f} labeled images/s",
                          flush=True)
    print()
    print(table(["method", "processes", "sync BN", "labeled images/s", "vs 1 process"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
