"""A model, on the host, of a corruption grid on a GPU with Python threads beside it: how many cells the grid
launches ahead of its reads (robustkit.jobs.CELLS_AHEAD) and how often Python hands its lock between threads
(robustkit.jobs.SWITCH_INTERVAL_S) decide whether the device runs dry.

* the "device": a thread that runs each cell for ``--cell-ms`` (sleeping, the lock released, as a GPU computes);
* the grid's thread: per cell ``--calls`` torch calls on a tiny tensor (each releases Python's lock and takes it
  back, as a kernel launch does), then hands the cell to the device; it reads a cell back (waits for it) when more
  than ``ahead`` are unread, and all of them at the end;
* a thread beside it doing ``--background`` seconds of pure Python (the corruptions' first calls, setting Triton
  up, the plots' warm-up).

The time of the grid against the device's own (cells x cell time), for each (ahead, switch interval): what the
GPU would lose to the host. It says nothing of a real GPU's figures; ``bench_corrupt_cold.py`` measures those
(variants ``read-each-cell`` and ``switch-5ms`` against ``shipped``).

    python bench/model_grid_threads.py [--cells 95] [--cell-ms 37] [--calls 200] [--background 1.2]
                                        [--ahead 0,8] [--intervals-ms 5,0.2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, load_average, table  # noqa: E402


def grid_seconds(cells: int, cell_s: float, calls: int, ahead: int, interval_s: float, background_s: float) -> float:
    """One run of the model: seconds from the first launch to the last cell read."""
    import torch

    x = torch.zeros(4)
    old = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    todo: queue.Queue = queue.Queue()
    finished = []

    def device():
        while (cell := todo.get()) is not None:
            time.sleep(cell_s)
            finished.append(cell)

    def python_work():
        end = time.thread_time() + background_s
        while time.thread_time() < end:
            sum(i * i for i in range(200))

    dev, beside = threading.Thread(target=device), threading.Thread(target=python_work)
    dev.start()
    try:
        start = time.perf_counter()
        beside.start()
        for k in range(cells):
            for _ in range(calls):
                torch.add(x, 1)
            todo.put(k)
            while len(finished) < k + 1 - ahead:   # more than `ahead` unread: wait for the oldest
                time.sleep(0.0002)
        while len(finished) < cells:
            time.sleep(0.0002)
        return time.perf_counter() - start
    finally:
        todo.put(None)
        dev.join()
        if beside.ident is not None:   # started
            beside.join()
        sys.setswitchinterval(old)


def _numbers(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=95)
    p.add_argument("--cell-ms", type=float, default=37.0, help="device time per cell [37: CIFAR-10-C, H100, fused]")
    p.add_argument("--calls", type=int, default=200, help="torch calls per cell on the grid's thread [200]")
    p.add_argument("--background", type=float, default=1.2, help="seconds of Python in the thread beside [1.2]")
    p.add_argument("--ahead", default="0,8", help="cells launched ahead of the reads, a comma list [0,8]")
    p.add_argument("--intervals-ms", default="5,0.2", help="switch intervals in ms, a comma list [5,0.2]")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is shown [3]")
    args = p.parse_args(argv)
    try:
        aheads, intervals = _numbers(args.ahead, int), _numbers(args.intervals_ms)
    except ValueError as e:
        print(f"error: --ahead / --intervals-ms: {e}", file=sys.stderr)
        return 2
    if not aheads or not intervals or min(aheads) < 0 or min(intervals) <= 0 or args.repeats < 1:
        print("error: give --ahead >= 0, --intervals-ms > 0 and --repeats >= 1", file=sys.stderr)
        return 2
    import torch

    header("a corruption grid with threads beside it, modelled on the host (not a GPU figure)", torch.device("cpu"))
    alone = args.cells * args.cell_ms / 1000
    print(f"# {args.cells} cells x {args.cell_ms:g} ms on the 'device' ({alone:.2f} s), {args.calls} torch calls per "
          f"cell, {args.background:g} s of Python beside the grid; median of {args.repeats}")
    rows = []
    for background in sorted({0.0, args.background}):
        for ahead in aheads:
            for ms in intervals:
                runs = [grid_seconds(args.cells, args.cell_ms / 1000, args.calls, ahead, ms / 1000, background)
                        for _ in range(args.repeats)]
                med = statistics.median(runs)
                rows.append([f"{background:g}", str(ahead), f"{ms:g}", f"{med:.2f}", f"{med - alone:+.2f}",
                             f"{min(runs):.2f}-{max(runs):.2f}"])
    print(table(["Python beside (s)", "cells ahead", "switch interval (ms)", "grid (s)", "vs device alone",
                 "min-max"], rows, align="rrrrrl"))
    print(f"# after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
