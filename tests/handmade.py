"""Hand-made run folders (config.yaml, metrics.jsonl, eval/*.json) with fixed numbers.

Report and notebook tests run on these instead of on models trained during the test: their numbers are
the same on every machine, so an expectation computed here by hand (or by an independent implementation
of the same rule) can be compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def corr_result(cells: dict[tuple[str, int], float], clean: float | None = 0.9, preset="cifar-10-c", **extra):
    return {
        "kind": "corruptions",
        "preset": preset,
        "seed": 0,
        "n": 100,
        "clean_accuracy": clean,
        "results": [{"corruption": c, "severity": s, "accuracy": a, "n": 100} for (c, s), a in cells.items()],
        **extra,
    }


def fgsm_result(points: dict[float, float], clean=0.9, **extra):
    return {
        "kind": "fgsm",
        "attack": "fgsm",
        "n": 100,
        "limit": None,
        "clean_accuracy": clean,
        "results": [{"eps": e, "accuracy": a, "n": 100} for e, a in points.items()],
        **extra,
    }


def make_run(root: Path, name: str, *, method="baseline", semi=False, labels=250, seed=0,
             dataset="cifar10", test_acc=None, fgsm=None, corr=None, arch="wrn-28-2", steps=1000) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"dataset": dataset, "labels": labels, "method": method, "semi": semi, "seed": seed,
              "arch": arch, "steps": steps}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"step": 10, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "images_per_s": 1e3, "elapsed_s": 1.0}]
    if test_acc is not None:
        lines.append({**lines[0], "step": 20, "test_acc": test_acc - 0.1})  # earlier eval, must be ignored
        lines.append({**lines[0], "step": 30, "test_acc": test_acc})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for kind, result in (("fgsm", fgsm), ("corruptions", corr)):
        if result is not None:
            (run / "eval").mkdir(exist_ok=True)
            header = {"checkpoint": str(run / "checkpoint.pt"), "sha256": "ab" * 32, "run": name,
                      "method": "gradaug-semi" if semi else method, "arch": arch, "dataset": dataset, "device": "cpu"}
            (run / "eval" / f"{kind}.json").write_text(json.dumps({**header, **result}))
    return run


# The notebook's fixture: two runs on digits, 3 epsilons, 3 corruptions x 2 severities, n = 100.
# "contrast" costs the baseline exactly nothing (0.97 clean, 0.97 at both severities), so its relative CE
# is undefined (less than one test image lost) and must be left out of the relative mCE.
NOTEBOOK_RUNS = {
    "baseline": dict(clean=0.97, test_acc=0.95, fgsm={0.0: 0.97, 0.05: 0.40, 0.1: 0.12},
                     corr={("gaussian_noise", 1): 0.90, ("gaussian_noise", 3): 0.70, ("fog", 1): 0.80,
                           ("fog", 3): 0.60, ("contrast", 1): 0.97, ("contrast", 3): 0.97}),
    "gradaug": dict(clean=0.96, test_acc=0.94, fgsm={0.0: 0.96, 0.05: 0.55, 0.1: 0.25},
                    corr={("gaussian_noise", 1): 0.93, ("gaussian_noise", 3): 0.81, ("fog", 1): 0.94,
                          ("fog", 3): 0.90, ("contrast", 1): 0.95, ("contrast", 3): 0.91}),
}


def notebook_runs(root: Path) -> Path:
    """The two NOTEBOOK_RUNS as run folders below ``root``; returns ``root``."""
    for name, spec in NOTEBOOK_RUNS.items():
        make_run(root, name, method=name, dataset="digits", arch="wrn-10-1", test_acc=spec["test_acc"],
                 fgsm=fgsm_result(spec["fgsm"], clean=spec["clean"]),
                 corr=corr_result(spec["corr"], clean=spec["clean"]))
    return root
