"""Evaluate checkpoints into result files: FGSM/PGD sweeps and corruption grids, resumable cell by cell.

For every checkpoint the results go to ``<run>/eval/`` (or ``--out``). The JSON is rewritten atomically
after every finished cell (a corruption x severity, or a checkpoint's whole epsilon sweep), so a run that
is interrupted and started again skips what is done. A finished file is reused only if it was made with
the same checkpoint (sha256), data, limit and settings; ``force`` recomputes. The CLI drives these
functions and prints; nothing here prints.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from robustkit import __version__, checkpoint
from robustkit.config import method_label
from robustkit.data import limit_indices, load_dataset
from robustkit.errors import RobustkitError
from robustkit.evaluate import accuracy, corruption_accuracies
from robustkit.io import write_json


class Progress:
    """What the jobs report while they run (the CLI maps this onto one rich progress bar)."""

    def set_total(self, total: int) -> None: ...
    def advance(self, n: int = 1, label: str | None = None) -> None: ...
    def note(self, message: str) -> None: ...


@dataclass
class Target:
    """One checkpoint to evaluate and where its results go."""
    path: Path
    raw: dict
    out_dir: Path
    sha256: str = field(default="")

    @property
    def run(self) -> str:
        return self.path.parent.name


def targets(paths: Sequence[str | Path], out: str | Path | None = None) -> list[Target]:
    """Resolve checkpoint files/folders, read (and so validate) every checkpoint before any work starts."""
    files = checkpoint.find_checkpoints(list(paths))
    result = []
    names: dict[str, int] = {}
    for f in files:
        raw = checkpoint.read(f)
        if out is None:
            out_dir = f.parent / "eval"
        elif len(files) == 1:
            out_dir = Path(out)
        else:
            name = f.parent.name
            names[name] = names.get(name, 0) + 1
            out_dir = Path(out) / (name if names[name] == 1 else f"{name}-{names[name]}")
        result.append(Target(f, raw, out_dir, checkpoint.sha256(f)))
    return result


class _TestData:
    """Test splits loaded once per (dataset, data_dir, limit), kept on the device."""

    def __init__(self, device: torch.device, data_dir: str | None, limit: int | None):
        self.device, self.data_dir, self.limit = device, data_dir, limit
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, raw: dict) -> tuple[torch.Tensor, torch.Tensor]:
        spec = raw["dataset"]["spec"]
        data_dir = self.data_dir or raw["dataset"].get("data_dir")
        key = (spec, data_dir)
        if key not in self._cache:
            data = load_dataset(spec, "test", data_dir)
            expected = raw.get("classes")
            if expected is not None and list(data.classes) != list(expected):
                raise RobustkitError(f"the test data of {spec} has classes {data.classes[:5]}..., the checkpoint "
                                     f"was trained on {expected[:5]}...: point --data-dir at the right data")
            idx = limit_indices(len(data.labels), self.limit)
            images, labels = (data.images, data.labels) if idx is None else (data.images[idx], data.labels[idx])
            self._cache[key] = (images.to(self.device), labels.to(self.device))
        return self._cache[key]


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    v = {"robustkit": __version__, "torch": str(torch.__version__)}
    for pkg in ("torchattacks", "imagecorruptions"):
        with contextlib.suppress(md.PackageNotFoundError):
            v[pkg] = md.version(pkg)
    return v


def _header(t: Target, kind: str, n: int, limit: int | None, device: torch.device, batch_size: int, amp: bool,
            channels_last: bool) -> dict:
    cfg = t.raw.get("config") or {}
    return {
        "kind": kind, "checkpoint": str(t.path.resolve()), "sha256": t.sha256, "run": t.run,
        "method": method_label(cfg) if cfg else None, "arch": t.raw.get("arch"),
        "dataset": t.raw["dataset"]["spec"], "labels": cfg.get("labels"), "seed_train": cfg.get("seed"),
        "split": "test", "n": n, "limit": limit, "batch_size": batch_size, "amp": amp,
        "channels_last": channels_last, "device": str(device),
        "versions": _versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _previous(path: Path, header: dict, keys: Sequence[str], force: bool, progress: Progress) -> dict | None:
    """The earlier result file, if it was made with the same settings (else None: start afresh)."""
    if force or not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        progress.note(f"{path} is unreadable; recomputing it")
        return None
    changed = [k for k in keys if old.get(k) != header.get(k)]
    if changed:
        progress.note(f"{path}: settings changed ({', '.join(changed)}); recomputing")
        return None
    return old


def _device_and_amp(device: str | None, amp: bool | None,
                    channels_last: bool | None) -> tuple[torch.device, bool, Callable, bool]:
    """The device, whether bf16 autocast is on, the autocast context, whether channels_last is on.

    Both default to on for CUDA and off for the CPU; either can be asked for on either device, so the
    CUDA code path (bf16 autocast, NHWC layout) runs, and is tested, on a CPU too.
    """
    dev = checkpoint.resolve_device(device)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp)
    autocast = functools.partial(torch.autocast, dev.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext
    use_cl = (dev.type == "cuda") if channels_last is None else bool(channels_last)
    return dev, use_amp, autocast, use_cl


def default_batch_size(device: torch.device) -> int:
    return 1000 if device.type == "cuda" else 250


def _cumulative(progress: Progress, label: str) -> Callable[[int], None]:
    """Adapt a callback that reports a running total to Progress.advance (increments)."""
    seen = [0]

    def call(total_done: int) -> None:
        progress.advance(total_done - seen[0], label=label)
        seen[0] = total_done
    return call


_FGSM_KEYS = ("sha256", "dataset", "n", "limit", "attack", "attack_params", "batch_size", "amp")
_CORRUPTION_KEYS = ("sha256", "dataset", "n", "limit", "preset", "seed", "batch_size", "amp")


def _parse_attack(attack: str, params: dict | None) -> tuple[str, str | None]:
    """("fgsm" | "pgd" | "torchattacks", the torchattacks class name or None); the attack and its
    parameters are checked here, before any checkpoint or data is read."""
    key = attack.strip()
    if key.lower() in ("fgsm", "pgd"):
        if params:
            raise RobustkitError("--attack-param is for --attack torchattacks:NAME; fgsm and pgd take their own flags")
        return key.lower(), None
    head, sep, name = key.partition(":")
    if head.lower() == "torchattacks" and sep and name.strip():
        from robustkit.attacks import check_torchattacks

        return "torchattacks", check_torchattacks(name.strip(), params)[0].__name__
    raise RobustkitError(f"unknown attack {attack!r}: use fgsm, pgd or torchattacks:NAME (e.g. torchattacks:AutoAttack)")


def run_fgsm(paths: Sequence[str | Path], eps: Sequence[float], *, attack: str = "fgsm", steps: int = 10,
             alpha: float | None = None, seed: int = 0, limit: int | None = None, batch_size: int | None = None,
             device: str | None = "auto", data_dir: str | None = None, out: str | Path | None = None,
             force: bool = False, amp: bool | None = None, channels_last: bool | None = None,
             attack_params: dict | None = None, progress: Progress | None = None,
             on_result: Callable[[dict, list[Path]], None] | None = None) -> list[dict]:
    """FGSM (PGD, or any eps-bounded torchattacks attack) accuracy at every epsilon for every checkpoint;
    writes eval/fgsm.{json,csv,png}."""
    from robustkit.attacks import fgsm_sweep, pgd_sweep, torchattacks_sweep
    from robustkit.report import write_fgsm_outputs

    progress = progress or Progress()
    kind, ta_name = _parse_attack(attack, attack_params)
    if kind == "pgd" and steps < 1:
        raise RobustkitError("--steps must be >= 1 for pgd")
    eps = list(eps)
    tgts = targets(paths, out)
    dev, use_amp, _, use_cl = _device_and_amp(device, amp, channels_last)
    if kind == "torchattacks":
        use_amp = False  # torchattacks runs the model as it is: fp32
    bs = batch_size or default_batch_size(dev)
    data = _TestData(dev, data_dir, limit)
    if kind == "fgsm":
        params: dict = {}
    elif kind == "pgd":
        params = {"steps": steps, "alpha": alpha, "seed": seed}
    else:
        params = {"name": ta_name, **(attack_params or {}), "seed": seed}
    label = f"torchattacks:{ta_name}" if kind == "torchattacks" else kind
    jobs = []
    for t in tgts:
        images, labels = data.get(t.raw)
        header = {**_header(t, "fgsm", len(labels), limit, dev, bs, use_amp, use_cl), "attack": label,
                  "attack_params": params}
        old = _previous(t.out_dir / "fgsm.json", header, _FGSM_KEYS, force, progress)
        done = {r["eps"]: r for r in (old or {}).get("results", [])}
        todo = [e for e in eps if e not in done]
        jobs.append((t, images, labels, header, done, todo))
    progress.set_total(sum(len(j[2]) for j in jobs if j[5]))
    results = []
    for t, images, labels, header, done, todo in jobs:
        if todo:
            model = checkpoint.build_model(t.raw, dev, channels_last=use_cl)
            advance = _cumulative(progress, f"{label} {t.run}")
            if 0.0 not in done and 0.0 not in todo:
                todo = [0.0, *todo]                            # clean accuracy always
            common = dict(batch_size=bs, device=dev, progress=advance)
            if kind == "fgsm":
                recs = fgsm_sweep(model, images, labels, todo, amp=use_amp, channels_last=use_cl, **common)
            elif kind == "pgd":
                recs = pgd_sweep(model, images, labels, todo, steps=steps, alpha=alpha, seed=seed, amp=use_amp,
                                 channels_last=use_cl, **common)
            else:
                recs = torchattacks_sweep(model, images, labels, todo, ta_name, attack_params, seed=seed,
                                          num_classes=len(t.raw.get("classes") or []) or None, **common)
            done.update({r["eps"]: r for r in recs})
        records = sorted(done.values(), key=lambda r: r["eps"])
        result = {**header, "clean_accuracy": done[0.0]["accuracy"] if 0.0 in done else None, "results": records}
        files = write_fgsm_outputs(result, t.out_dir)
        if on_result:
            on_result(result, files)
        results.append(result)
    return results


def run_corruptions(paths: Sequence[str | Path], corruptions: Sequence[str], severities: Sequence[int], *,
                    preset: str = "auto", seed: int = 0, limit: int | None = None, batch_size: int | None = None,
                    device: str | None = "auto", data_dir: str | None = None, out: str | Path | None = None,
                    force: bool = False, amp: bool | None = None, channels_last: bool | None = None,
                    progress: Progress | None = None,
                    on_result: Callable[[dict, list[Path]], None] | None = None) -> list[dict]:
    """Accuracy under every (corruption, severity) for every checkpoint; eval/corruptions.{json,csv,png}."""
    from robustkit.corruptions import COMMON, resolve_preset
    from robustkit.report import write_corruption_outputs

    progress = progress or Progress()
    tgts = targets(paths, out)
    dev, use_amp, autocast, use_cl = _device_and_amp(device, amp, channels_last)
    bs = batch_size or default_batch_size(dev)
    data = _TestData(dev, data_dir, limit)
    cells = [(c, s) for c in corruptions for s in severities]
    jobs = []
    for t in tgts:
        images, labels = data.get(t.raw)
        size = int(max(images.shape[-2:]))
        header = {**_header(t, "corruptions", len(labels), limit, dev, bs, use_amp, use_cl),
                  "preset": resolve_preset(preset, size), "seed": seed}
        path = t.out_dir / "corruptions.json"
        old = _previous(path, header, _CORRUPTION_KEYS, force, progress)
        done = {(r["corruption"], r["severity"]): r for r in (old or {}).get("results", [])}
        clean = (old or {}).get("clean_accuracy")
        jobs.append([t, images, labels, header, done, clean, [c for c in cells if c not in done]])
    progress.set_total(sum(len(j[6]) for j in jobs))

    def snapshot(header, done, clean) -> dict:
        records = sorted(done.values(), key=lambda r: (corruptions.index(r["corruption"]) if r["corruption"] in corruptions
                                                       else len(corruptions), r["corruption"], r["severity"]))
        accs = [r["accuracy"] for r in records]
        common = [r["accuracy"] for r in records if r["corruption"] in COMMON]
        return {**header, "clean_accuracy": clean,
                "mean_corruption_accuracy": sum(accs) / len(accs) if accs else None,
                "mean_common_accuracy": sum(common) / len(common) if common else None,
                "complete": all(c in done for c in cells), "results": records}

    # Cell-major within a group of checkpoints that share test data and preset: each corrupted batch is
    # generated once and fed to every model that still needs that cell.
    groups: dict[tuple, list] = {}
    for job in jobs:
        t, images = job[0], job[1]
        groups.setdefault((id(images), job[3]["preset"]), []).append(job)
    results = []
    for group in groups.values():
        models = {}
        for job in group:
            t, images, labels, header, done, clean, todo = job
            if todo or clean is None:
                models[id(job)] = checkpoint.build_model(t.raw, dev, channels_last=use_cl)
            if clean is None:
                job[5] = accuracy(models[id(job)], images, labels, bs, autocast, use_cl)
        images, labels, preset = group[0][1], group[0][2], group[0][3]["preset"]
        for name, sev in cells:
            needing = [job for job in group if (name, sev) in job[6]]
            if not needing:
                continue
            accs = corruption_accuracies([models[id(j)] for j in needing], images, labels, name, sev,
                                         preset=preset, seed=seed, batch_size=bs, autocast=autocast,
                                         channels_last=use_cl)
            for job, acc in zip(needing, accs):
                t, _, labels_j, header, done, clean = job[:6]
                done[(name, sev)] = {"corruption": name, "severity": sev, "accuracy": acc, "n": len(labels_j)}
                write_json(t.out_dir / "corruptions.json", snapshot(header, done, clean))   # resume point
            progress.advance(len(needing), label=f"{name} s{sev}")
        for job in group:
            t, _, _, header, done, clean = job[:6]
            result = snapshot(header, done, clean)
            files = write_corruption_outputs(result, t.out_dir)
            if on_result:
                on_result(result, files)
            results.append(result)
        del models
    return results
