"""The whole pipeline on the bundled digits data, offline: train three methods, attack, corrupt, report.

Baseline, GradAug and GradAug-semi are trained with the same labeled subset (seeded), then each
checkpoint gets the FGSM sweep and all 19 corruptions x 5 severities, and one report compares them with
the baseline as the mCE reference. The numbers are whatever this run measures.
"""

from __future__ import annotations

import contextlib
import time

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from robustkit.config import TrainConfig
from robustkit.errors import RobustkitError

METHODS = (("baseline", "baseline", False), ("gradaug", "gradaug", False), ("gradaug-semi", "gradaug", True))


@dataclass
class DemoSettings:
    labels: int = 250
    steps: int = 300
    arch: str = "wrn-10-1"   # ~3.5 min for the whole demo on 2 CPU cores
    batch_size: int = 32
    lr: float = 0.05
    seed: int = 0
    eps: str = "0.05..0.25"
    corruptions: str = "all"
    severities: str = "1..5"
    device: str = "auto"


def default_out() -> Path:
    return Path(f"robustkit-demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def run_demo(out: str | Path | None = None, settings: DemoSettings | None = None, *, progress: bool = True,
             make_bar: Callable | None = None, echo: Callable[[str], None] = print) -> Path:
    """Run the demo into ``out`` (default: a new ``robustkit-demo-<time>`` folder); returns report.md."""
    from robustkit.attacks import parse_eps
    from robustkit.corruptions import parse_corruptions, parse_severities
    from robustkit.jobs import run_corruptions, run_fgsm
    from robustkit.report import write_report
    from robustkit.train import fit

    s = settings or DemoSettings()
    out = Path(out) if out is not None else default_out()
    if out.exists() and any(out.iterdir()):
        raise RobustkitError(f"{out} exists and is not empty: give the demo a new --out folder")
    eps, names, sevs = parse_eps(s.eps), parse_corruptions(s.corruptions), parse_severities(s.severities)
    runs = out / "runs"
    for label, method, semi in METHODS:
        echo(f"[demo] training {label} on digits ({s.labels} labels, {s.steps} steps, {s.arch})")
        cfg = TrainConfig(dataset="digits", labels=s.labels, arch=s.arch, method=method, semi=semi, steps=s.steps,
                          batch_size=s.batch_size, lr=s.lr, seed=s.seed, eval_every=max(1, s.steps // 3),
                          device=s.device)
        res = fit(cfg, runs / label, progress=progress)
        echo(f"[demo] {label}: test accuracy {res.test_acc:.1%}, {res.elapsed_s:.0f} s")
    bar = make_bar or (lambda title: contextlib.nullcontext())  # jobs take progress=None as "no bar"
    t0 = time.perf_counter()
    with bar("fgsm") as b:
        run_fgsm([runs], eps, device=s.device, progress=b)
    echo(f"[demo] FGSM sweep eps {s.eps} on every checkpoint: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    with bar("corruptions") as b:
        run_corruptions([runs], names, sevs, device=s.device, progress=b)
    echo(f"[demo] {len(names)} corruptions x {len(sevs)} severities on every checkpoint: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    report = write_report([runs / label for label, _, _ in METHODS], out_dir=out / "report",
                          baseline=runs / "baseline")
    echo(f"[demo] report: {time.perf_counter() - t0:.0f} s")
    return report

