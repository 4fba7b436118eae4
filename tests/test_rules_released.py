"""Released corrupted datasets, read and scored exactly; the report's generated-vs-released section.

The data are made here in the released layouts (ImageNet-C: <corruption>/<severity>/<class>/*.JPEG;
CIFAR-10-C / CIFAR-100-C: <corruption>.npy with 5 severity blocks + labels.npy), from flat images whose
red level encodes a class. The model (a TorchScript file) predicts class floor(K x mean red), so every
cell's accuracy is known by construction: the expectations below are counted from the design, never from
robustkit's readers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import invoke
from torch import nn

from handmade import corr_result, make_run

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]


class _RedBins(nn.Module):
    """Class k when the image's mean red level r lies in [k / K, (k + 1) / K)."""

    def __init__(self, k: int):
        super().__init__()
        self.register_buffer("centers", torch.arange(k, dtype=torch.float32) + 0.5)
        self.k = k
        self.scale = nn.Parameter(torch.ones(()))   # evaluation code may ask a model for its parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, 0].mean((1, 2)) * self.k
        return -self.scale * (r[:, None] - self.centers) ** 2


def _red_model(tmp_path: Path, k: int) -> Path:
    path = tmp_path / f"redbins{k}.ts"
    torch.jit.save(torch.jit.script(_RedBins(k)), str(path))
    return path


def _red_level(cls: int, k: int) -> int:
    """The uint8 red level at the centre of class ``cls``'s bin (far from both edges)."""
    return int(round((cls + 0.5) * 255 / k))


def _corrupt_cli(model: Path, data: str, out: Path, k: int, *extra) -> dict:
    res = invoke("corrupt", model, "--trust-code", "--data", data, "--num-classes", k, "--mean", "0", "--std", "1", "--out", out,
                 "--no-progress", "--device", "cpu", *extra)
    assert res.exit_code == 0, res.output
    return json.loads((out / "corruptions-released.json").read_text())


# ------------------------------------------------------------------------------------------ ImageNet-C
def test_imagenet_c_folder_is_read_and_scored_exactly(tmp_path):
    from PIL import Image

    from robustkit.sources.released import open_released

    classes = ["n01440764", "n01443537", "n01484850"]   # sorted: labels 0, 1, 2
    k, per_class = 3, 2
    root = tmp_path / "ImageNet-C"
    design = {}   # (corruption, severity) -> correct images (of 6), distinct between neighbouring severities
    for ci, corruption in enumerate(("fog", "gaussian_noise")):
        for sev in range(1, 6):
            correct = (2 * sev + 3 * ci) % 7
            design[(corruption, sev)] = correct
            n = 0
            for label, cls in enumerate(classes):
                folder = root / corruption / str(sev) / cls
                folder.mkdir(parents=True)
                for i in range(per_class):
                    right = n < correct
                    shown = label if right else (label + 1 + (n % 2)) % k   # another class's level when wrong
                    arr = np.zeros((40, 40, 3), dtype=np.uint8)
                    arr[..., 0] = _red_level(shown, k)
                    arr[..., 1] = 30 + 10 * i
                    Image.fromarray(arr).save(folder / f"ILSVRC2012_val_{sev}{label}{i:05d}.JPEG", quality=95)
                    n += 1

    rel = open_released(f"imagenet-c:{root}")
    assert rel.corruptions == ["gaussian_noise", "fog"]   # robustkit's (imagecorruptions') order
    images, labels = rel.cell("fog", 3)
    assert images.shape == (6, 3, 40, 40) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    # the pixels are the files' (decoded independently with PIL, JPEG of a flat image: within 2 levels)
    files = sorted((root / "fog" / "3").glob("*/*.JPEG"), key=lambda p: (p.parent.name, p.name))
    decoded = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    assert (images.int() - decoded.int()).abs().max() <= 2

    model = _red_model(tmp_path, k)
    result = _corrupt_cli(model, f"imagenet-c:{root}", tmp_path / "eval", k)
    assert result["source"] == "released" and result["preset"] == "released:imagenet-c"
    got = [(r["corruption"], r["severity"], r["n"]) for r in result["results"]]
    assert got == [(c, s, 6) for c in ("gaussian_noise", "fog") for s in range(1, 6)]
    for r in result["results"]:
        assert r["accuracy"] == pytest.approx(design[(r["corruption"], r["severity"])] / 6, abs=1e-12), r


# ------------------------------------------------------------------------------- CIFAR-10-C / CIFAR-100-C
@pytest.mark.parametrize("kind, k", [("cifar10-c", 10), ("cifar100-c", 100)])
def test_cifar_c_npy_is_read_and_scored_exactly(tmp_path, kind, k):
    from robustkit.sources.released import open_released

    n = 20
    rng = np.random.default_rng(k)
    root = tmp_path / kind.upper()
    root.mkdir()
    labels = rng.integers(0, k, size=5 * n)
    np.save(root / "labels.npy", labels.astype(np.uint8))
    design = {}
    correct_per_block = {"contrast": [3, 17, 8, 12, 5], "gaussian_noise": [20, 0, 9, 14, 1]}
    for corruption, counts in correct_per_block.items():
        arr = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
        for s, correct in enumerate(counts):
            design[(corruption, s + 1)] = correct
            right = np.zeros(n, dtype=bool)
            right[rng.permutation(n)[:correct]] = True
            for i in range(n):
                label = int(labels[s * n + i])
                shown = label if right[i] else (label + 1 + rng.integers(0, k - 1)) % k
                arr[s * n + i, :, :, 0] = _red_level(shown, k)
                arr[s * n + i, :, :, 2] = (7 * i) % 256
        np.save(root / f"{corruption}.npy", arr)

    rel = open_released(f"{kind}:{root}")
    assert rel.corruptions == ["gaussian_noise", "contrast"]
    for s in (1, 4):
        images, lab = rel.cell("contrast", s)
        assert lab.tolist() == labels[(s - 1) * n: s * n].tolist()
        assert torch.equal(images, torch.from_numpy(np.load(root / "contrast.npy")[(s - 1) * n: s * n]).permute(0, 3, 1, 2))

    result = _corrupt_cli(_red_model(tmp_path, k), f"{kind}:{root}", tmp_path / "eval", k)
    assert result["source"] == "released" and result["preset"] == f"released:{kind}"
    got = [(r["corruption"], r["severity"], r["n"]) for r in result["results"]]
    assert got == [(c, s, n) for c in ("gaussian_noise", "contrast") for s in range(1, 6)]
    for r in result["results"]:
        assert r["accuracy"] == pytest.approx(design[(r["corruption"], r["severity"])] / n, abs=1e-12), r
    all_cells = [v / n for v in design.values()]
    assert result["mean_corruption_accuracy"] == pytest.approx(sum(all_cells) / len(all_cells), abs=1e-12)


def test_limit_applies_to_every_released_cell(tmp_path):
    """--limit 7 on a released CIFAR-10-C of 20 images per severity: every cell is scored on 7 images, the same
    subset of images and labels (robustkit.data.limit_indices, the fixed subset --limit takes everywhere). Which
    images are shown their own class differs per severity, so each cell's accuracy is counted on that subset
    from the design."""
    from robustkit.data import limit_indices

    n, k = 20, 10
    rng = np.random.default_rng(3)
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    labels = rng.integers(0, k, size=5 * n)
    np.save(root / "labels.npy", labels.astype(np.uint8))
    right = rng.random(5 * n) < 0.6
    shown = np.where(right, labels, (labels + 1) % k)
    arr = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
    arr[..., 0] = np.array([_red_level(int(c), k) for c in shown], dtype=np.uint8)[:, None, None]
    np.save(root / "contrast.npy", arr)
    idx = limit_indices(n, 7).numpy()
    expected = [right[s * n:(s + 1) * n][idx].mean() for s in range(5)]
    assert len(set(expected)) > 1 and expected != [right[s * n:(s + 1) * n].mean() for s in range(5)]
    result = _corrupt_cli(_red_model(tmp_path, k), f"cifar10-c:{root}", tmp_path / "eval", k, "--limit", "7")
    assert [r["n"] for r in result["results"]] == [7] * 5 and result["n"] == 7 and result["limit"] == 7
    assert [r["accuracy"] for r in result["results"]] == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- generated vs released report
def _table_rows(text: str, heading: str) -> list[list[str]]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ")]
    return rows[1:]   # without the header row


def test_report_generated_vs_released_on_handmade_results(tmp_path):
    from robustkit.report import write_report

    root = tmp_path / "runs"
    gen = {("gaussian_noise", 1): 0.80, ("gaussian_noise", 2): 0.60, ("fog", 1): 0.90, ("fog", 2): 0.70,
           ("contrast", 1): 0.50}
    rel = {("gaussian_noise", 1): 0.75, ("gaussian_noise", 2): 0.45, ("fog", 1): 0.95, ("fog", 2): 0.85,
           ("frost", 1): 0.30}
    make_run(root, "wrn-gen", corr=corr_result(gen, source="generated"))
    make_run(root, "wrn-rel", corr=corr_result(rel, preset="released:cifar10-c", source="released"))
    # the same released files for another model (another sha256): not paired with wrn-gen
    make_run(root, "other-rel", corr=corr_result({("fog", 1): 0.1}, preset="released:cifar10-c", source="released",
                                                 sha256="cd" * 32))
    text = write_report(root, out_dir=tmp_path / "report").read_text()
    heading = "## Generated vs released corruptions"
    assert text.count(heading) == 1
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    assert "`wrn-gen` (generated) vs `wrn-rel` (released)" in section and "other-rel" not in section
    # By hand: mean over severities, gap = generated - released, in %: only corruptions both have.
    # gaussian_noise: (80 + 60) / 2 = 70.0 vs (75 + 45) / 2 = 60.0 -> +10.0
    # fog:            (90 + 70) / 2 = 80.0 vs (95 + 85) / 2 = 90.0 -> -10.0
    assert _table_rows(text, heading) == [["gaussian_noise", "70.0", "60.0", "+10.0"],
                                          ["fog", "80.0", "90.0", "-10.0"]]


def test_report_has_no_released_section_without_a_pair(tmp_path):
    from robustkit.report import write_report

    root = tmp_path / "runs"
    make_run(root, "a", corr=corr_result({("fog", 1): 0.5}, source="generated"))
    make_run(root, "b", corr=corr_result({("fog", 1): 0.4}, source="released", sha256="cd" * 32))
    text = write_report(root, out_dir=tmp_path / "report").read_text()
    assert "Generated vs released" not in text
