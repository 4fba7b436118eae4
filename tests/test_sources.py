"""Evaluating any classifier: model sources, 224 px folder data, released CIFAR-10-C files.

A torchvision resnet18 with random weights (saved to temporary files, nothing downloaded) on a small
folder of images of mixed sizes made here. Every expectation is computed independently in the test.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torchattacks
import torchvision
from cli_helpers import assert_one_line_error, invoke

from robustkit.attacks import fgsm_sweep
from robustkit.errors import RobustkitError
from robustkit.sources import data as sdata
from robustkit.sources.models import IMAGENET_MEAN, IMAGENET_STD, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """val/<3 classes>/<2 images each>, sizes 300x260 .. 340x380, smooth random pictures (PNG and JPEG)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs") / "imagenet-tiny"
    g = torch.Generator().manual_seed(0)
    sizes = [(300, 260), (340, 380), (256, 300), (290, 290), (400, 270), (260, 340)]
    for i, (w, h) in enumerate(sizes):
        cls = ["n01", "n02", "n03"][i % 3]
        (root / "val" / cls).mkdir(parents=True, exist_ok=True)
        small = torch.rand(3, 8, 8, generator=g)
        img = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(root / "val" / cls / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    d = tmp_path_factory.mktemp("w")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save(state, d / "r18.pth")
    save_file(state, str(d / "r18.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, d / "r18-dp.pth")
    return d, net


def test_preprocessing_equals_torchvision_standard_evaluation(folder, tmp_path, monkeypatch):
    """The default decoder (--decode cpu) gives the pixels of torchvision's standard ImageNet evaluation
    (ImageFolder's PIL loader, Resize(256), CenterCrop(224)) exactly, on non-square JPEGs and PNGs."""
    from PIL import Image
    from torchvision import transforms as T

    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    data = sdata.load_folder(folder, resize=256, crop=224)
    assert data.images.shape == (6, 3, 224, 224) and data.classes == ["n01", "n02", "n03"]
    files = sorted((folder / "val").rglob("*.*"))
    files.sort(key=lambda p: (p.parent.name, p.name))
    standard = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    for i, f in enumerate(files):
        with open(f, "rb") as fh:
            ref = standard(Image.open(fh).convert("RGB"))   # torchvision.datasets.folder.pil_loader
        assert torch.equal(data.images[i], ref), f          # bit for bit
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_default_decode_equals_the_standard_pipeline_on_real_jpegs(cifar_folder, tmp_path, monkeypatch):
    """Real JPEGs (CIFAR-10 q75), upscaled through the 224 px path (32 px -> Resize(36) is an enlargement,
    a case where tensor and PIL resizing disagree most) and at their own size: bit for bit."""
    from PIL import Image
    from torchvision import transforms as T

    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    for resize, crop in ((36, 32), (256, 224), (None, None)):
        data = sdata.load_folder(cifar_folder / "test", resize=resize, crop=crop)
        files = sorted((cifar_folder / "test").glob("*/*.jpg"), key=lambda p: (p.parent.name, p.name))
        steps = ([T.Resize(resize), T.CenterCrop(crop)] if resize else []) + [T.PILToTensor()]
        ref = torch.stack([T.Compose(steps)(Image.open(f).convert("RGB")) for f in files[::10]])
        assert torch.equal(data.images[::10], ref), (resize, crop)


def test_default_preprocessing_is_torchvisions_for_other_input_sizes():
    """Without --resize/--crop a model of input size S >= 100 gets Resize(round(S / 0.875)) + CenterCrop(S): the
    numbers torchvision's own weights carry in their evaluation transforms, 256 / 224 for ResNet-50 and 342 / 299
    for Inception v3 (299 / 0.875 = 341.7: rounding, not truncating). Metadata only, nothing is downloaded."""
    import torchvision.models as tvm

    for weights in (tvm.ResNet50_Weights.IMAGENET1K_V1, tvm.Inception_V3_Weights.IMAGENET1K_V1):
        t = weights.transforms()
        assert sdata.default_preprocessing(t.crop_size[0], None, None) == (t.resize_size[0], t.crop_size[0]), weights


def test_a_classes_file_sets_the_label_order_and_skips_comments(tmp_path):
    """--classes FILE lists the names in the MODEL's output order, one per line; lines starting with '#' are
    comments. The folder 'ant' is listed third, so its images are label 2, whatever the folders' alphabetical
    order. Every image of a class is a flat grey of the class's own level, so each image's label is checked
    against the folder it came from."""
    from PIL import Image

    levels = {"ant": 10, "bee": 20, "cat": 30}
    for name, level in levels.items():
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), level, dtype=np.uint8)).save(tmp_path / "val" / name / f"{i}.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("# the model's output order\ncat\nbee\nant\n")
    data = sdata.load_eval_data(f"folder:{tmp_path}", classes_file=str(classes))
    assert data.classes == ["cat", "bee", "ant"]
    pairs = sorted((int(img[0, 0, 0]), int(label)) for img, label in zip(data.images, data.labels))
    assert pairs == [(10, 2), (10, 2), (20, 1), (20, 1), (30, 0), (30, 0)]


def test_decode_gpu_without_cuda_is_one_clear_line(folder, weights, tmp_path, monkeypatch):
    d, _ = weights
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = invoke("fgsm", "torchvision:resnet18", "--weights", d / "r18.pth", "--num-classes", 3, "--data",
                 f"folder:{folder}", "--decode", "gpu", "--device", "cpu", "--out", tmp_path / "o", "--no-progress")
    assert_one_line_error(res, "--decode gpu", "cuda", "--decode cpu")
    res = invoke("corrupt", "torchvision:resnet18", "--weights", d / "r18.pth", "--num-classes", 3, "--data",
                 f"folder:{folder}", "--decode", "jpeg", "--device", "cpu", "--out", tmp_path / "o", "--no-progress")
    assert_one_line_error(res, "--decode must be cpu or gpu")
    assert not (tmp_path / "o").exists()


def test_cache_is_reused_and_invalidated(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    before = sdata.DECODED["count"]
    a = sdata.load_folder(folder, resize=256, crop=224)
    assert sdata.DECODED["count"] == before + 6
    b = sdata.load_folder(folder, resize=256, crop=224)
    assert sdata.DECODED["count"] == before + 6      # second load decodes nothing: memory-mapped cache
    assert torch.equal(a.images, b.images)
    sdata.load_folder(folder, resize=240, crop=224)  # other preprocessing -> another cache entry
    assert sdata.DECODED["count"] == before + 12
    keys = {sdata._cache_paths(folder / "val", [], 256, 224, ["a"], d)[0] for d in sdata.DECODERS}
    assert len(keys) == 2                            # the decoder is part of the key: nvJPEG never reads as cpu


def test_every_model_source_gives_the_same_logits(folder, weights, tmp_path, monkeypatch):
    d, net = weights
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    x = sdata.load_folder(folder, resize=256, crop=224).images.float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net((x - mean) / std)
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 224, 224)), str(tmp_path / "r18.ts"))
    batch = torch.export.Dim("batch", min=1, max=4096)   # a dynamic batch, as robustkit batches freely
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 224, 224),), dynamic_shapes={"x": {0: batch}}),
                      str(tmp_path / "r18.pt2"))
    (tmp_path / "mymodels.py").write_text(
        "import torch, torchvision\n"
        f"def make():\n    m = torchvision.models.resnet18(num_classes=3)\n"
        f"    m.load_state_dict(torch.load({str(d / 'r18.pth')!r}, weights_only=True))\n    return m\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sources = [("torchvision:resnet18", dict(weights=d / "r18.pth", num_classes=3)),
               ("torchvision:resnet18", dict(weights=d / "r18.safetensors", num_classes=3)),
               ("torchvision:resnet18", dict(weights=d / "r18-dp.pth", num_classes=3)),
               (str(tmp_path / "r18.ts"), dict(trust_code=True)), (str(tmp_path / "r18.pt2"), dict(trust_code=True)),
               ("python:mymodels:make", dict(trust_code=True))]
    for source, kw in sources:
        model, info = load_model(source, device="cpu", **kw)
        with torch.no_grad():
            out = model(x)
        assert torch.allclose(out, ref, atol=1e-4), source
        assert not info.random_weights


def test_fgsm_on_a_torchvision_model_equals_torchattacks(folder, weights, tmp_path, monkeypatch):
    d, _ = weights
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    data = sdata.load_folder(folder, resize=256, crop=224)
    model, _ = load_model("torchvision:resnet18", d / "r18.pth", num_classes=3, device="cpu")
    x, y = data.images.float() / 255, data.labels
    from robustkit.attacks import fgsm_images

    for e, adv in zip([0.01, 0.03], fgsm_images(model, x, y, [0.01, 0.03])):
        assert torch.equal(adv, torchattacks.FGSM(model, eps=e)(x, y))   # the images, bit for bit
    for r in fgsm_sweep(model, x, y, [0.0, 0.01, 0.03], batch_size=6):
        adv = torchattacks.FGSM(model, eps=r["eps"])(x, y)
        with torch.no_grad():
            assert r["accuracy"] == (model(adv).argmax(1) == y).sum().item() / len(y)


def test_cli_fgsm_and_corrupt_on_a_torchvision_model(folder, weights, tmp_path):
    d, _ = weights
    out = tmp_path / "eval-r18"
    res = invoke("fgsm", "torchvision:resnet18", "--weights", d / "r18.pth", "--num-classes", "3", "--data",
                 f"folder:{folder}", "--eps", "0.01", "--out", out, "--no-progress", "--device", "cpu")
    assert res.exit_code == 0, res.output
    fg = json.loads((out / "fgsm.json").read_text())
    assert fg["model_source"] == "torchvision:resnet18" and fg["n"] == 6 and fg["random_weights"] is False
    assert fg["dataset"] == f"folder:{folder / 'val'}"
    res = invoke("corrupt", "torchvision:resnet18", "--num-classes", "3", "--data", f"folder:{folder}",
                 "--corruptions", "fog,contrast", "--severities", "1", "--out", tmp_path / "eval-rand",
                 "--no-progress", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "RANDOM weights" in res.output
    co = json.loads((tmp_path / "eval-rand" / "corruptions.json").read_text())
    assert co["preset"] == "imagenet-c" and co["source"] == "generated" and co["random_weights"] is True
    md = invoke("report", out, tmp_path / "eval-rand", "--out", tmp_path / "rep")
    assert md.exit_code == 0, md.output


def test_released_cifar10_c_cells_are_read_by_severity_block(weights, tmp_path):
    n = 20
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    labels = np.concatenate([np.full(n, s % 3) for s in range(5)]).astype(np.uint8)
    fog = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
    for s in range(5):
        fog[s * n:(s + 1) * n] = 40 * s + np.arange(n)[:, None, None, None]  # block s, image i: 40 s + i
    np.save(root / "labels.npy", labels)
    np.save(root / "fog.npy", fog)
    from robustkit.sources.released import open_released

    rel = open_released(f"cifar10-c:{root}")
    for sev in range(1, 6):
        images, lab = rel.cell("fog", sev)
        assert images.shape == (n, 3, 32, 32)
        assert images[:, 0, 0, 0].tolist() == [40 * (sev - 1) + i for i in range(n)]
        assert lab.tolist() == [(sev - 1) % 3] * n
    d, _ = weights
    res = invoke("corrupt", "torchvision:resnet18", "--weights", d / "r18.pth", "--num-classes", "3",
                 "--data", f"cifar10-c:{root}", "--classes", _classes_file(tmp_path), "--out", tmp_path / "rel",
                 "--no-progress", "--device", "cpu")
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "rel" / "corruptions-released.json").read_text())
    assert result["source"] == "released" and result["preset"] == "released:cifar10-c"
    assert [(r["corruption"], r["severity"], r["n"]) for r in result["results"]] == [("fog", s, n) for s in range(1, 6)]
    model, _ = load_model("torchvision:resnet18", d / "r18.pth", num_classes=3, device="cpu")
    for r in result["results"]:
        images, lab = rel.cell("fog", r["severity"])
        with torch.no_grad():
            expected = (model(images.float() / 255).argmax(1) == lab).float().mean().item()
        assert r["accuracy"] == pytest.approx(expected)


def _classes_file(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("a\nb\nc\n")
    return p


def test_bad_input_is_one_clear_line(folder, weights, tmp_path):
    d, _ = weights
    common = ["--no-progress", "--device", "cpu", "--out", tmp_path / "x"]
    assert_one_line_error(invoke("fgsm", "torchvision:resnet81", "--data", f"folder:{folder}", *common),
                          "no model", "resnet18")
    assert_one_line_error(invoke("fgsm", "torchvision:resnet18", "--weights", d / "r18.pth", "--data",
                                 f"folder:{folder}", *common), "do not fit", "fc.weight", "--num-classes")
    assert_one_line_error(invoke("fgsm", "python:os:getcwd", "--data", f"folder:{folder}", *common), "--trust-code")
    assert_one_line_error(invoke("fgsm", "torchvision:resnet18", "--data", f"folder:{folder}", *common),
                          "1000 outputs", "3 classes")
    assert_one_line_error(invoke("fgsm", "torchvision:resnet18", "--num-classes", "3", *common), "give --data")
    assert_one_line_error(invoke("fgsm", "torchvision:resnet18", "--weights", tmp_path / "none.pth",
                                 "--num-classes", "3", "--data", f"folder:{folder}", *common), "does not exist")
    bad = tmp_path / "C"
    bad.mkdir()
    np.save(bad / "labels.npy", np.zeros(10, dtype=np.uint8))
    np.save(bad / "fog.npy", np.zeros((10, 32, 32), dtype=np.uint8))
    assert_one_line_error(invoke("corrupt", "torchvision:resnet18", "--num-classes", "3", "--data", f"cifar10-c:{bad}",
                                 *common), "fog.npy", "expected")
    np.save(bad / "fog.npy", np.zeros((50, 32, 32, 3), dtype=np.uint8))
    (bad / "fog.npy").write_bytes((bad / "fog.npy").read_bytes()[:-100])   # truncated
    assert_one_line_error(invoke("corrupt", "torchvision:resnet18", "--num-classes", "3", "--data", f"cifar10-c:{bad}",
                                 *common), "fog.npy is not a readable .npy array")
    (bad / "labels.npy").write_bytes(b"not an array")
    assert_one_line_error(invoke("corrupt", "torchvision:resnet18", "--num-classes", "3", "--data", f"cifar10-c:{bad}",
                                 *common), "labels.npy is not a readable .npy array")
    (bad / "labels.npy").unlink()
    assert_one_line_error(invoke("corrupt", "torchvision:resnet18", "--num-classes", "3", "--data", f"cifar10-c:{bad}",
                                 *common), "labels.npy")
    broken = tmp_path / "broken" / "val" / "a"
    broken.mkdir(parents=True)
    (broken / "x.jpg").write_bytes(b"not an image")
    assert_one_line_error(invoke("fgsm", "torchvision:resnet18", "--num-classes", "1", "--data",
                                 f"folder:{broken.parent.parent}", *common), "x.jpg")
    assert not (tmp_path / "x").exists()   # nothing written by any failing call


def test_timm_without_timm_is_a_clear_error(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert_one_line_error(invoke("fgsm", "timm:resnet50", "--data", f"folder:{folder}", "--no-progress"),
                          "pip install 'robustkit[timm]'")


def test_recipe_quick_runs(tmp_path):
    import subprocess

    from conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / "eval" / "imagenet_robustness.py"), "--quick", "--out",
                          str(tmp_path / "q"), "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    md = (tmp_path / "q" / "report" / "report.md").read_text()
    assert "27.90" in md and "ResNet-50" in md      # the paper's rows are next to ours
    assert "ImageNet-C mCE" in md and "76.7" in md  # the published mCE of the same weights next to ours
    assert json.loads((tmp_path / "q" / "eval-resnet50" / "fgsm.json").read_text())["random_weights"] is True


def test_load_model_of_a_checkpoint_and_errors(tmp_path):
    with pytest.raises(RobustkitError, match="carries its own weights"):
        load_model(str(tmp_path), weights="w.pth")


def test_python_models_that_do_not_fit_the_data_are_one_line(tmp_path, monkeypatch):
    """A model of your own code whose outputs are not the data's classes (digits: 10), whose forward fails,
    whose module does not import or whose function needs arguments: one line each, before any sweep (before,
    fgsm raised IndexError in the middle of it and corrupt reported wrong accuracies with exit 0)."""
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "def seven():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(7))\n"
        "def ten():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))\n"
        "def broken():\n    return torch.nn.Linear(5, 10)\n"
        "def needs(n):\n    return torch.nn.Linear(n, 10)\n")
    (tmp_path / "typo.py").write_text("def f(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["--data", "digits", "--limit", "20", "--device", "cpu", "--trust-code", "--no-progress",
              "--out", tmp_path / "out"]
    for command in (["fgsm", "python:mine:seven", "--eps", "0.05"],
                    ["corrupt", "python:mine:seven", "--corruptions", "fog", "--severities", "1"]):
        assert_one_line_error(invoke(*command, *common), "outputs of shape (2, 7)", "10 classes")
    assert_one_line_error(invoke("fgsm", "python:mine:broken", *common), "fails on a batch", "mat1 and mat2")
    assert_one_line_error(invoke("fgsm", "python:mine:needs", *common), "needs()", "no arguments")
    assert_one_line_error(invoke("fgsm", "python:typo:f", *common), "importing typo failed", "SyntaxError")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.json"))
    assert invoke("fgsm", "python:mine:ten", "--eps", "0.05", *common).exit_code == 0
