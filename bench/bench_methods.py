"""Cost of every training method: images/s of each on the same model, batch and data, in one run.

Every method is robustkit's own ``fit`` (the product loop) for the same number of steps; the figure is
labeled images per second over the timed steps (after warm-up steps, from the run's metrics windows, so
evaluation and checkpoints are outside). Next to it: the cost a method's arithmetic predicts, in units
of a baseline step (one forward + backward of the labeled batch = 1):

* baseline, CutMix, ShakeDrop: 1 (CutMix adds a box copy, ShakeDrop a per-image scale);
* GradAug (n sub-networks): 1 + sum over sub-networks of width^2 x (resolution / size)^2, in expectation
  with widths [lower, U(lower, 1) ...] and resolutions uniform over the list (conv cost ~ channels^2 x pixels);
* GradAug-semi: GradAug on the labeled + unlabeled batch (x (1 + unlabeled ratio));
* Mean Teacher: student forward + backward on labeled + unlabeled, teacher forward (1/3 of a forward +
  backward) on the same: (1 + ratio) x 4/3.

    python bench/bench_methods.py                          # CPU: wrn-16-2, digits, batch 64, 2 + 6 steps
    python bench/bench_methods.py --device cuda --arch wrn-28-2 --steps 200 --warmup 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, read_metrics, resolve_data, setup_device, table, timed_seconds  # noqa: E402

METHODS = [  # (label, TrainConfig fields)
    ("baseline", dict(method="baseline")),
    ("cutmix-p0.5", dict(method="cutmix", cutmix_prob=0.5)),
    ("shakedrop", dict(method="shakedrop")),
    ("gradaug", dict(method="gradaug")),
    ("gradaug-cutmix", dict(method="gradaug", cutmix_prob=0.5)),
    ("gradaug-semi", dict(method="gradaug", semi=True)),
    ("mean-teacher", dict(method="mean-teacher")),
]


def predicted_cost(label: str, subnets: int = 3, lower: float = 0.8, res_ratios=(1.0, 7 / 8, 3 / 4), ratio: int = 1) -> float:
    mean_r2 = sum(r * r for r in res_ratios) / len(res_ratios)
    mean_w2_uniform = (1 - lower ** 3) / (3 * (1 - lower))          # E[w^2], w ~ U(lower, 1)
    gradaug = 1 + (lower ** 2 + (subnets - 1) * mean_w2_uniform) * mean_r2
    return {"gradaug": gradaug, "gradaug-cutmix": gradaug, "gradaug-semi": gradaug * (1 + ratio),
            "mean-teacher": (1 + ratio) * 4 / 3}.get(label, 1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="digits | folder:PATH [digits]")
    p.add_argument("--arch", default="wrn-16-2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--labels", type=int, default=250)
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--methods", default=",".join(m for m, _ in METHODS))
    args = p.parse_args(argv)
    device = setup_device(args.device, args.threads)
    if device is None:
        return 2
    spec, described = resolve_data(args.data)
    header(f"training cost per method ({args.arch}, batch {args.batch_size}, {described})", device)
    from robustkit.config import TrainConfig
    from robustkit.train import fit

    wanted = args.methods.split(",")
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for label, fields in METHODS:
            if label not in wanted:
                continue
            total = args.warmup + args.steps
            cfg = TrainConfig(dataset=spec, labels=args.labels, arch=args.arch, batch_size=args.batch_size,
                              steps=total, log_every=args.warmup if args.warmup else total, eval_every=total,
                              eval_limit=100, device=str(device), **fields)
            fit(cfg, Path(tmp) / label, progress=False)
            seconds = timed_seconds(read_metrics(Path(tmp) / label), args.warmup, total)
            ips = args.steps * args.batch_size / seconds
            base = base or ips
            rows.append([label, f"{ips:,.1f}", f"{base / ips:.2f}x", f"{predicted_cost(label):.2f}x"])
            print(f"{label}: {ips:,.1f} labeled images/s", flush=True)
    print()
    print(table(["method", "labeled images/s", "cost vs baseline (measured)", "predicted by arithmetic"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
