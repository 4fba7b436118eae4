"""``storage="released"``: corrupted images stored as the released CIFAR-10-C / ImageNet-C files were.

The makers' last step (hendrycks/robustness, ImageNet-C/create_c): make_cifar_c.py stores
``np.uint8(corruption(img))`` (truncation of the float 0..255 output); make_imagenet_c.py saves
``Image.fromarray(np.uint8(img))`` with ``quality=85, optimize=True``. The expectations below are computed
the makers' way, with numpy and Pillow, independently of robustkit.corruptions.storage.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from PIL import Image
from test_jpeg import cifar_images, pillow_jpeg

from robustkit.corruptions import corrupt
from robustkit.corruptions.presets import CIFAR_10_C, IMAGENET_C
from robustkit.corruptions.storage import RELEASED_JPEG_QUALITY, levels, store
from robustkit.errors import RobustkitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def makers_jpeg85(u8: np.ndarray) -> np.ndarray:
    """make_imagenet_c.py's save of uint8 (N, H, W, 3) images, decoded again (a loop is fine here)."""
    out = []
    for a in u8:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, quality=85, format="JPEG", optimize=True)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return np.stack(out)


def as_levels(x: torch.Tensor) -> np.ndarray:
    """robustkit's stored float32 k/255 images -> their levels k, (N, H, W, 3) int64 (exact: k/255*255 rounds to k)."""
    return torch.round(x * 255).permute(0, 2, 3, 1).numpy().astype(np.int64)


@pytest.fixture(scope="module")
def cifar(cifar_folder) -> torch.Tensor:
    return cifar_images(cifar_folder, per_class=2)   # 20 real CIFAR-10 test images, uint8


def test_truncation_is_the_makers_np_uint8():
    """levels() floors 255 x as np.uint8 does, except within 2**-12 of a whole level from below (there float32
    and float64 arithmetic disagree about the side; levels() may take the whole level): 0.02 % of these values."""
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 255, 200_000)                       # what the makers have: float64 in 0..255
    x = torch.from_numpy(v / 255).float()                  # robustkit's float32 image of the same value
    ours = levels(x, "gaussian_noise").numpy().astype(np.int64)
    makers = np.uint8(v).astype(np.int64)
    frac = v - np.floor(v)
    away = frac < 1 - 2.0 ** -12
    assert np.array_equal(ours[away], makers[away])
    near = ours[~away] - makers[~away]
    assert np.all((near == 0) | (near == 1)) and near.any() and (~away).mean() < 5e-4
    # every whole level stays itself (a float32 k/255 times 255 may land an ulp below k)
    k = torch.arange(256, dtype=torch.float32)
    assert torch.equal(levels(k / 255, "gaussian_noise"), k) and torch.equal(levels(k / 255, "pixelate"), k)
    # the corruptions whose makers' output is 8-bit already are rounded, not truncated
    assert float(levels(torch.tensor([100.7 / 255]), "pixelate")) == 101
    assert float(levels(torch.tensor([100.7 / 255]), "motion_blur")) == 101
    assert float(levels(torch.tensor([100.7 / 255]), "fog")) == 100


@pytest.mark.parametrize("size", [32, 224, 37])
def test_imagenet_storage_is_the_makers_jpeg_85(cifar, size):
    """store(.., "imagenet-c") = np.uint8 + Pillow's save(quality=85, optimize=True) + decode, pixel for pixel."""
    base = cifar.float()
    if size != 32:
        base = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(1)
    frac = torch.rand(base.shape, generator=g) * 0.9 + 0.05           # whole levels +- nothing near a boundary
    x = ((base.floor() + frac) / 255).clamp(0, 1)
    makers = makers_jpeg85(np.uint8(x.permute(0, 2, 3, 1).double().numpy() * 255))
    assert np.array_equal(as_levels(store(x, "gaussian_noise", "imagenet-c")), makers.astype(np.int64))
    # cifar-10-c: the .npy holds the truncated levels, nothing more
    assert np.array_equal(as_levels(store(x, "gaussian_noise", "cifar-10-c")),
                          np.uint8(x.permute(0, 2, 3, 1).double().numpy() * 255).astype(np.int64))


def test_released_jpeg_compression_is_the_makers_double_jpeg(cifar):
    """jpeg_compression as ImageNet-C holds it: the corruption's JPEG at the severity's quality, then the
    makers' JPEG at 85 on top, exactly; as CIFAR-10-C holds it: the corruption's JPEG alone."""
    assert RELEASED_JPEG_QUALITY == 85   # make_imagenet_c.py: save(path, quality=85, optimize=True)
    for severity in (1, 5):
        q_in, q_c = IMAGENET_C["jpeg_compression"][severity - 1], CIFAR_10_C["jpeg_compression"][severity - 1]
        once = pillow_jpeg(cifar, q_in).permute(0, 2, 3, 1).numpy()
        expected = makers_jpeg85(once).astype(np.int64)
        ours = corrupt(cifar, "jpeg_compression", severity, "imagenet-c", storage="released")
        assert np.array_equal(as_levels(ours), expected), severity
        ours_c = corrupt(cifar, "jpeg_compression", severity, "cifar-10-c", storage="released")
        assert np.array_equal(as_levels(ours_c), pillow_jpeg(cifar, q_c).permute(0, 2, 3, 1).numpy().astype(np.int64))


@pytest.mark.parametrize("name", ["gaussian_noise", "glass_blur", "pixelate", "contrast"])
def test_corrupt_with_released_storage_stores_the_float_result(cifar, name):
    for preset in ("imagenet-c", "cifar-10-c"):
        plain = corrupt(cifar, name, 3, preset, seed=4)
        stored = corrupt(cifar, name, 3, preset, seed=4, storage="released")
        assert stored.dtype == torch.float32 and stored.shape == plain.shape
        assert torch.equal(stored, store(plain, name, preset))
        assert torch.equal(stored * 255, torch.round(stored * 255))      # 8-bit levels
        # truncation alone moves a pixel by less than a level; JPEG 85 on top by more (noise is smoothed away)
        change = float((stored - plain).abs().max() if preset == "cifar-10-c" else (stored - plain).abs().mean()) * 255
        if name == "pixelate" and preset == "cifar-10-c":
            assert change == 0       # Pillow's 8-bit resize, as the makers ran it: nothing left to store
        else:
            assert 0 < change < 1 if preset == "cifar-10-c" else change > 0
    grey = cifar[:, :1]
    assert corrupt(grey, name, 3, "cifar-10-c", storage="released").shape == grey.shape


def test_unknown_storage_is_one_clear_error(cifar):
    with pytest.raises(RobustkitError, match="float .* released"):
        corrupt(cifar, "fog", 1, storage="npy")


@pytest.fixture
def run(evaluated_runs, tmp_path):
    dst = tmp_path / "runs"
    shutil.copytree(evaluated_runs / "baseline", dst / "baseline")
    return dst / "baseline"


def test_corrupt_storage_released_end_to_end(run, tmp_path):
    """The CLI evaluates the stored images (accuracy computed here from corrupt + store + the model), says so
    in the JSON and the table, and recomputes when the storage changes; a file from before the setting
    counts as float."""
    from robustkit.jobs import _TestData, ModelOptions, targets
    from robustkit.checkpoint import resolve_device
    from robustkit.rng import derive_seed

    out = tmp_path / "eval"
    args = ["corrupt", run, "--corruptions", "gaussian_noise", "--severities", "3", "--preset", "imagenet-c",
            "--limit", "60", "--device", "cpu", "--out", out, "--no-progress"]
    res = invoke(*args, "--storage", "released")
    assert res.exit_code == 0, res.output
    assert "imagenet-c, stored as released" in " ".join(res.output.split())
    data = json.loads((out / "corruptions.json").read_text())
    assert data["storage"] == "released" and data["source"] == "generated"
    # the same accuracy, computed here: one batch, whose seed is derived from (seed 0, cell, first image 0)
    (t,) = targets([run], out, ModelOptions())
    images, labels = _TestData(resolve_device("cpu"), None, 60, ModelOptions()).get(t)
    model = t.info.build(torch.device("cpu"), False).eval()
    with torch.no_grad():
        seed = derive_seed(0, "gaussian_noise", 3, 0)
        x = corrupt(images.float() / 255 if images.dtype == torch.uint8 else images, "gaussian_noise", 3,
                    "imagenet-c", seed=seed)
        expected = float((model(store(x, "gaussian_noise", "imagenet-c")).argmax(1) == labels).double().mean())
        plain = float((model(x).argmax(1) == labels).double().mean())
    assert expected != plain   # JPEG 85 smooths much of the noise away: the storage matters here
    assert data["results"][0]["accuracy"] == pytest.approx(expected, abs=1e-12)
    # switching back recomputes (and says why)
    res = invoke(*args)
    assert res.exit_code == 0 and "settings changed (storage)" in " ".join(res.output.split()), res.output
    data = json.loads((out / "corruptions.json").read_text())
    assert data["storage"] == "float" and data["results"][0]["accuracy"] == pytest.approx(plain, abs=1e-12)
    # an older file without the key is a float result: not recomputed
    del data["storage"]
    (out / "corruptions.json").write_text(json.dumps(data))
    res = invoke(*args)
    assert res.exit_code == 0 and "settings changed" not in res.output, res.output
    assert_one_line_error(invoke(*args, "--storage", "npy"), "unknown storage", "released")
