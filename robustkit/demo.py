"""The whole pipeline on the bundled digits data, offline: train three methods x three seeds, attack,
corrupt, report.

Baseline, GradAug and GradAug-semi are each trained with seeds 0, 1 and 2 (the seed picks the labeled
subset too, so a seed's three runs share their labeled images), on few labels (50: 5 per class) so that
no method is near 100 % and differences can show. Every checkpoint then gets the FGSM sweep (eps
0.01..0.05) and all 19 corruptions at severities 1, 3 and 5, and one report puts each method's mean ± std over the seeds side by side,
with the seed-0 baseline as the mCE reference. The numbers are whatever this run measures; a difference
smaller than the spread over seeds is noise, and the report says so.
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
from robustkit.io import tidy_on_error, writable_dir

METHODS = (("baseline", "baseline", False), ("gradaug", "gradaug", False), ("gradaug-semi", "gradaug", True))


@dataclass
class DemoSettings:
    labels: int = 50          # 5 per class: the methods are far from saturated on digits
    steps: int = 100          # ~4 min for the whole demo on 2 CPU cores
    arch: str = "wrn-10-1"
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 32
    lr: float = 0.05
    eps: str = "0.01..0.05"   # digits models are fragile: at 0.05 and above FGSM leaves ~0 %
    eps_step: float = 0.01
    corruptions: str = "all"
    severities: str = "1,3,5"  # 19 x 3 cells keep the demo under 5 minutes; --severities 1..5 for all
    device: str = "auto"
    amp: bool | None = None            # None: on for CUDA, off for CPU
    channels_last: bool | None = None  # None: on for CUDA, off for CPU


def default_out() -> Path:
    return Path(f"robustkit-demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def run_names(settings: DemoSettings) -> list[str]:
    return [f"{label}-s{seed}" for seed in settings.seeds for label, _, _ in METHODS]


def run_demo(out: str | Path | None = None, settings: DemoSettings | None = None, *, progress: bool = True,
             make_bar: Callable | None = None, echo: Callable[[str], None] = print) -> Path:
    """Run the demo into ``out`` (default: a new ``robustkit-demo-<time>`` folder); returns report.md."""
    from robustkit.attacks import parse_eps
    from robustkit.corruptions import parse_corruptions, parse_severities

    s = settings or DemoSettings()
    if not s.seeds:
        raise RobustkitError("the demo needs at least one seed")
    out = Path(out) if out is not None else default_out()
    if out.is_dir() and any(out.iterdir()):
        raise RobustkitError(f"{out} exists and is not empty: give the demo a new --out folder")
    eps, names, sevs = parse_eps(s.eps, s.eps_step), parse_corruptions(s.corruptions), parse_severities(s.severities)
    try:
        # bad settings that training finds (labels, arch, device) fail before anything is written: no empty demo
        # folder is left behind; a demo that got further keeps what it wrote
        with tidy_on_error():
            writable_dir(out)
            return _run(out, s, eps, names, sevs, progress, make_bar, echo)
    except RobustkitError as exc:
        if "--labels" in str(exc):   # the demo's --labels is a number: train's "or --labels all" is no way out here
            raise RobustkitError(str(exc).replace(" or --labels all", "")) from None
        raise


def _run(out: Path, s: DemoSettings, eps, names, sevs, progress: bool, make_bar, echo) -> Path:
    """The demo's work into ``out``: train, attack, corrupt, report."""
    from robustkit.jobs import run_corruptions, run_fgsm
    from robustkit.report import write_report
    from robustkit.train import fit

    runs = out / "runs"
    t_train = time.perf_counter()
    for seed in s.seeds:
        for label, method, semi in METHODS:
            cfg = TrainConfig(dataset="digits", labels=s.labels, arch=s.arch, method=method, semi=semi,
                              steps=s.steps, batch_size=s.batch_size, lr=s.lr, seed=seed,
                              eval_every=max(1, s.steps // 2), device=s.device, amp=s.amp,
                              channels_last=s.channels_last)
            res = fit(cfg, runs / f"{label}-s{seed}", progress=progress)
            echo(f"[demo] {label} seed {seed} ({s.labels} labels, {s.steps} steps, {s.arch}): "
                 f"test accuracy {res.test_acc:.1%}, {res.elapsed_s:.0f} s")
    echo(f"[demo] training {len(s.seeds) * len(METHODS)} runs: {time.perf_counter() - t_train:.0f} s")
    bar = make_bar or (lambda title: contextlib.nullcontext())  # jobs take progress=None as "no bar"
    flags = dict(device=s.device, amp=s.amp, channels_last=s.channels_last)
    t0 = time.perf_counter()
    with bar("fgsm") as b:
        run_fgsm([runs], eps, progress=b, **flags)
    echo(f"[demo] FGSM sweep eps {s.eps} on every checkpoint: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    with bar("corruptions") as b:
        run_corruptions([runs], names, sevs, progress=b, **flags)
    echo(f"[demo] {len(names)} corruptions x {len(sevs)} severities on every checkpoint: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    report = write_report([runs / name for name in run_names(s)], out_dir=out / "report",
                          baseline=runs / f"baseline-s{s.seeds[0]}")
    echo(f"[demo] report: {time.perf_counter() - t0:.0f} s")
    return report
