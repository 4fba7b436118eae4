"""Run folders: read what one run left on disk (config.yaml, metrics.jsonl, eval/*.json) into a RunResult."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustkit.errors import RobustkitError, first_line
from robustkit.report.results import _check_result, _clean, eval_stem


# --------------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one run folder holds, read from its small files only (never the checkpoint)."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    fgsm: dict | None = None          # the first attack sweep: FGSM when there is one, else PGD, else torchattacks
    corruptions: dict | None = None   # generated corruptions; the released files' result when only that exists
    metrics: list[dict] = field(default_factory=list)
    attacks: list[dict] = field(default_factory=list)   # every attack sweep, ``fgsm`` first
    released: dict | None = None      # the result on the released files (CIFAR-10-C / ImageNet-C), if any

    @property
    def more_attacks(self) -> list[dict]:
        """The attack sweeps besides ``fgsm`` (PGD, torchattacks:NAME evaluated in the same folder)."""
        return [a for a in self.attacks if a is not self.fgsm]

    @property
    def corruption_results(self) -> list[dict]:
        """Every corruption result, each once: generated, then the released files' (``corruptions`` is the
        released result itself when the run has no generated one)."""
        results = [r for r in (self.corruptions, self.released) if r]
        return results[:1] if len(results) == 2 and results[0] is results[1] else results

    def _from_eval(self, key: str) -> Any:
        for result in (self.fgsm, self.corruptions):
            if result and result.get(key) is not None:
                return result[key]
        return None

    @property
    def has_config(self) -> bool:
        return bool(self.config)

    @property
    def method(self) -> str:
        """The method's label from the config (gradaug-semi, cutmix-p0.5, ...; eval JSON as fallback)."""
        if self.config.get("method"):
            from robustkit.config import method_label

            return method_label(self.config)
        return str(self._from_eval("method") or "?")

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset") or self._from_eval("dataset") or "?")

    @property
    def arch(self) -> str:
        return str(self.config.get("arch") or self._from_eval("arch") or "?")

    @property
    def labels(self) -> int | None:
        """Number of labels; None means all labels (check ``has_config`` to tell 'all' from unknown)."""
        labels = self.config.get("labels")
        return None if labels is None else int(labels)

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return None if seed is None else int(seed)

    @property
    def steps(self) -> int | None:
        steps = self.config.get("steps")
        return None if steps is None else int(steps)

    @property
    def clean_accuracy(self) -> float | None:
        """Clean test accuracy from the eval JSONs (FGSM first: it is what the ε columns compare to)."""
        return _clean(self.fgsm) if _clean(self.fgsm) is not None else _clean(self.corruptions)

    @property
    def final_test_accuracy(self) -> tuple[float, str] | None:
        """(accuracy, source): the last ``test_acc`` in metrics.jsonl, else the eval JSON's clean
        accuracy if it was measured on the whole test split (no --limit)."""
        for line in reversed(self.metrics):
            if line.get("test_acc") is not None:
                return float(line["test_acc"]), "metrics"
        for result in (self.fgsm, self.corruptions):
            if result and result.get("limit") is None and _clean(result) is not None:
                return _clean(result), "eval"
        return None


def _eval_files(path: Path) -> list[Path]:
    """The result files an evaluation folder (``fgsm.json``, ``pgd.json``, ``corruptions-released.json``,
    ...) holds directly: JSON files whose ``kind`` names an evaluation (what ``robustkit fgsm
    torchvision:NAME --out eval-x`` writes)."""
    found = []
    for file in sorted(path.glob("*.json")):
        if file.name in ("fgsm.json", "corruptions.json"):
            found.append(file)
            continue
        try:
            if file.stat().st_size > 50_000_000:   # not a result file: those are small
                continue
            obj = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and obj.get("kind") in ("fgsm", "corruptions"):
            found.append(file)
    return found


def _is_run_dir(path: Path) -> bool:
    """A run folder (config.yaml or eval/*.json) or an evaluation folder (result files directly inside)."""
    return ((path / "config.yaml").is_file() or any((path / "eval").glob("*.json"))
            or bool(_eval_files(path)))


def _find_run_dirs(root: Path) -> list[Path]:
    """Every folder below ``root`` that is a run dir; the walk does not descend into a run dir."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if _is_run_dir(here):
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RobustkitError(f"cannot read {path}: {exc}; re-run the evaluation that writes it") from None
    if not isinstance(obj, dict):
        raise RobustkitError(f"{path} is not a JSON object; re-run the evaluation that writes it")
    return obj


def _read_config(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RobustkitError(f"cannot read {path}: {first_line(exc, None)}; fix or delete the file") from None
    if not isinstance(config, dict):
        raise RobustkitError(f"{path} is not a YAML mapping; fix or delete the file")
    return config


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl lines; a line that does not parse (a run writing it right now) is skipped."""
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def _load_run(path: Path, name: str) -> RunResult:
    run = RunResult(path=path, name=name)
    if (path / "config.yaml").is_file():
        run.config = _read_config(path / "config.yaml")
    run.metrics = _read_metrics(path / "metrics.jsonl")
    # One result per attack and per corruption source (eval_stem); when two files hold the same one (an
    # older version wrote every attack to fgsm.json), the file named after it wins.
    files = sorted((path / "eval").glob("*.json")) + _eval_files(path)
    by_stem: dict[str, tuple[bool, dict]] = {}
    for file in files:
        obj = _read_json(file)
        kind = obj.get("kind") or (file.stem if file.stem in ("fgsm", "corruptions") else None)
        if kind not in ("fgsm", "corruptions"):
            continue
        try:
            _check_result(obj, kind)
        except ValueError as exc:
            raise RobustkitError(f"{file}: {exc}; re-run the evaluation that writes it") from None
        stem = eval_stem(obj, kind)
        if stem not in by_stem or (file.stem == stem and not by_stem[stem][0]):
            by_stem[stem] = (file.stem == stem, obj)
    results = {stem: obj for stem, (_, obj) in by_stem.items()}
    run.attacks = [results[s] for s in sorted((s for s in results if not s.startswith("corruptions")),
                                              key=lambda s: (_ATTACK_ORDER.get(s, len(_ATTACK_ORDER)), s))]
    run.fgsm = run.attacks[0] if run.attacks else None
    run.released = results.get("corruptions-released")
    run.corruptions = results.get("corruptions") or run.released
    return run


_ATTACK_ORDER = {"fgsm": 0, "pgd": 1}   # then torchattacks-NAME, by name


def _run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, or paths relative to the runs' common parent when two folders share a name."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    parent = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(parent).as_posix() for p in paths]


def collect_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[RunResult]:
    """Read run folders: each path is a run dir, or a folder with run dirs somewhere below it.

    A run dir holds ``config.yaml`` or ``eval/*.json``. Runs come back in the order given (folders
    expanded in sorted order), each once. A path that does not exist or holds no run -> RobustkitError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    dirs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is a file, not a folder"
            raise RobustkitError(f"{path} {what}: pass run folders (holding config.yaml or eval/*.json) or their parent")
        found = [path] if _is_run_dir(path) else _find_run_dirs(path)
        if not found and (path / "report.md").is_file():
            continue   # a report folder (e.g. runs/report, which `robustkit report runs/*` itself wrote): no runs
        if not found:
            raise RobustkitError(
                f"no runs in {path}: neither it nor a folder below it holds config.yaml or eval/*.json; "
                "train or evaluate first, or pass the right folder"
            )
        dirs += [d.resolve() for d in found if d.resolve() not in dirs]
    if not dirs:
        raise RobustkitError("no run folders given: pass at least one run folder or a folder of runs")
    return [_load_run(d, n) for d, n in zip(dirs, _run_names(dirs))]



def _run_label(run: RunResult, base: RunResult | None) -> str:
    return f"{run.name} (baseline)" if run is base else run.name
