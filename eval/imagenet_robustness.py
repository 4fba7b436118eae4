"""The GradAug paper's ImageNet robustness table for your ResNet-50: FGSM 0.05..0.25 and ImageNet-C.

    python eval/imagenet_robustness.py --weights r50.pth --imagenet /data/imagenet [--imagenet-c /data/ImageNet-C]
    python eval/imagenet_robustness.py --quick          # a tiny made-up 224 px folder, random weights: a smoke run

Steps (each one a robustkit command, resumable, results in OUT/eval-resnet50/):

1. ``robustkit fgsm torchvision:resnet50 --weights W --data folder:IMAGENET --eps 0.05..0.25``
   (ImageNet val: Resize(256) + CenterCrop(224); class order = sorted wnids, or --classes FILE);
2. ``robustkit corrupt torchvision:resnet50 ... --preset imagenet-c --storage released`` (generated, each
   image stored as the released ImageNet-C files were: 8-bit, JPEG quality 85; the published mCEs and AlexNet's
   errors were measured on those files), and with --imagenet-c the released images too
   (OUT/eval-resnet50/corruptions-released.json, beside the generated corruptions.json);
3. OUT/report/report.md: our FGSM row under the paper's ResNet-50 rows, the ImageNet-C mCE (AlexNet-normalised,
   15 corruptions x 5 severities) of generated and released corruptions next to the published mCE of the same
   torchvision weights (ResNet-50: 76.7 %), then robustkit's usual report (per-corruption table, generated vs
   released gap). The mCE lines are printed too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from robustkit.scripting import run_cli  # noqa: E402


def make_tiny_folder(root: Path, n_classes: int = 4, per_class: int = 2) -> tuple[Path, Path]:
    """A tiny ImageNet-like val folder (smooth random pictures of mixed sizes) + a 1000-line classes file."""
    import numpy as np
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    wnids = [f"n{i:08d}" for i in range(1000)]
    for c in range(n_classes):
        d = root / "val" / wnids[c]
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            h, w = 240 + 16 * k, 280 + 8 * c
            small = torch.rand(3, 6, 6, generator=g)
            img = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(d / f"{k}.JPEG")
    classes = root / "classes.txt"
    classes.write_text("\n".join(wnids) + "\n")
    return root, classes


def paper_table(fgsm_json: Path) -> str:
    import json

    from robustkit.report.paper import PAPER_FGSM_EPS, PAPER_FGSM_IMAGENET

    ours = json.loads(fgsm_json.read_text())
    points = {round(r["eps"], 6): r["accuracy"] for r in ours["results"]}
    header = "| model | " + " | ".join(f"ε={e:g}" for e in PAPER_FGSM_EPS) + " |"
    lines = ["## FGSM on ImageNet, ResNet-50 (accuracy %)", "", header,
             "|---|" + "---:|" * len(PAPER_FGSM_EPS)]
    for name, row in PAPER_FGSM_IMAGENET.items():
        lines.append(f"| {name} (paper) | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    cells = [f"{100 * points[e]:.2f}" if e in points else "" for e in PAPER_FGSM_EPS]
    label = "ours" + (" — RANDOM weights, a smoke run" if ours.get("random_weights") else f" ({ours.get('weights')})")
    lines.append(f"| **{label}**, n = {ours['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mce_table(evaluations: list[tuple[str, Path]]) -> str:
    """Markdown: per evaluation (label, corruptions.json) its ImageNet-C mCE, relative mCE and mean accuracy over
    the 15 x 5, next to the published mCE of the same torchvision weights; what is missing where there is none."""
    import json

    from robustkit.report.protocols import protocol_numbers, published_mce

    lines = ["## ImageNet-C mCE (AlexNet-normalised, 15 corruptions x 5 severities, %)", "",
             "| model | corruptions | mCE | relative mCE | accuracy 15×5 | published mCE of these torchvision weights |",
             "|---|---|---:|---:|---:|---|"]
    notes = []
    for label, path in evaluations:
        result = json.loads(path.read_text())
        n = protocol_numbers(result)
        pub = published_mce(result.get("model_source"))
        pub_text = f"{100 * pub[0]:.1f} ({pub[1]}; {pub[2]})" if pub else "none published"
        cells = [f"{100 * v:.1f}" if v is not None else "–" for v in (n.mce, n.relative_mce, n.accuracy)]
        who = str(result.get("model_source")) + (" — RANDOM weights, a smoke run" if result.get("random_weights") else "")
        lines.append(f"| {who} | {label} | " + " | ".join(cells) + f" | {pub_text} |")
        if not n.complete:
            notes.append(f"{label}: {n.missing_text()}")
        elif n.mce_note:
            notes.append(f"{label}: {n.mce_note}")
    text = "\n".join(lines + ([""] + [f"- {note}." for note in notes] if notes else [])) + "\n"
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="torchvision ResNet-50 state dict (.pth / .safetensors)")
    p.add_argument("--imagenet", help="ImageNet folder (PATH/val/<wnid>/*.JPEG or PATH/<wnid>/...)")
    p.add_argument("--imagenet-c", help="released ImageNet-C folder (<corruption>/<severity>/<wnid>/)")
    p.add_argument("--classes", help="the model's class order, one wnid per line [sorted folder names]")
    p.add_argument("--out", type=Path, default=Path("runs/imagenet-robustness"))
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, help="evaluate N validation images (a fixed random subset)")
    p.add_argument("--corruptions", default="all")
    p.add_argument("--quick", action="store_true", help="tiny made-up folder, random weights, 2 corruptions")
    args = p.parse_args(argv)
    out = args.out
    corruptions, severities = args.corruptions, "1..5"
    if args.quick:
        folder, classes = make_tiny_folder(out / "tiny-imagenet")
        args.imagenet, args.classes, corruptions, severities = str(folder), str(classes), "fog,contrast", "1"
    elif not args.imagenet:
        print("error: give --imagenet PATH (and --weights FILE), or --quick", file=sys.stderr)
        return 2
    model = ["torchvision:resnet50"] + (["--weights", args.weights] if args.weights else [])
    common = ["--data", f"folder:{args.imagenet}", "--device", args.device, "--no-progress"]
    common += ["--classes", args.classes] if args.classes else []
    common += ["--limit", str(args.limit)] if args.limit else []
    ev = out / "eval-resnet50"
    steps = [["fgsm", *model, *common, "--eps", "0.05..0.25", "--out", str(ev)],
             ["corrupt", *model, *common, "--preset", "imagenet-c", "--storage", "released", "--corruptions", corruptions,
              "--severities", severities, "--out", str(ev)]]
    if args.imagenet_c:
        steps.append(["corrupt", *model, "--data", f"imagenet-c:{args.imagenet_c}", "--device", args.device,
                      "--no-progress", "--out", str(ev),   # into corruptions-released.json, beside the generated
                      *(["--classes", args.classes] if args.classes else [])])
    for cli_args in steps:
        code = run_cli(cli_args)
        if code:
            return code
    code = run_cli(["report", str(ev), "--out", str(out / "report")])
    if code:
        return code
    report = out / "report" / "report.md"
    from robustkit.io import write_text

    evaluations = [("generated", ev / "corruptions.json")]
    if args.imagenet_c:
        evaluations.append(("released", ev / "corruptions-released.json"))
    mce = mce_table(evaluations)
    print(mce)
    write_text(report, paper_table(ev / "fgsm.json") + "\n" + mce + "\n" + report.read_text())
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
