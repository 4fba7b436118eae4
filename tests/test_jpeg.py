"""jpeg_compression computed in torch (robustkit/corruptions/jpeg.py) against Pillow's JPEG codec.

The reference is what Hendrycks' make_*_c.py and imagecorruptions do: ``Image.save(buf, "JPEG",
quality=q)`` and decode the bytes again (Pillow 13.0 with libjpeg-turbo 3.2 here). Measured on real
CIFAR-10 test images (32 px), CIFAR images enlarged or tiled to 224 px, and odd sizes, at every quality
of both presets (cifar-10-c 80, 65, 58, 50, 40; imagenet-c 25, 18, 15, 10, 7), in 0..255 levels:

    mean |ours - Pillow| = 0, max = 0, pixels within 2 levels = 100 %: identical, bit for bit.

That is the design, not luck: the module does libjpeg's integer arithmetic step by step (fixed-point
colour conversion, biased 2x2 averaging, islow DCTs, IJG tables, fancy upsampling), so the constants
below are the measured numbers and the test holds them exactly. The issue's aim was mean < 0.5 and
99 % within 2 levels. A libjpeg that is not libjpeg-turbo/IJG 6b-compatible (IJG libjpeg 9 upsamples
chroma by DCT scaling) would differ; the test then reports the numbers it measured.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustkit.corruptions import corrupt
from robustkit.corruptions.jpeg import CHROMA_TABLE, LUMA_TABLE, jpeg_roundtrip, quant_table
from robustkit.corruptions.presets import CIFAR_10_C, IMAGENET_C

MEAN_ABS_DIFF = 0.0  # measured mean |ours - Pillow| in 0..255 levels, every image set and quality
MAX_ABS_DIFF = 0.0  # measured max |ours - Pillow|
WITHIN_2_LEVELS = 1.0  # measured fraction of pixel values within 2 levels of Pillow's

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pillow_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Pillow's save + decode of each uint8 (N, 3, H, W) image (the reference; a loop is fine here)."""
    out = []
    for a in images.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        out.append(torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()))
    return torch.stack(out).permute(0, 3, 1, 2)


def ours_u8(images: torch.Tensor, preset: str, severity: int) -> torch.Tensor:
    """The product path: ``corrupt`` on uint8 input, back to 0..255 levels."""
    return torch.round(corrupt(images, "jpeg_compression", severity, preset) * 255).to(torch.uint8)


def assert_matches_pillow(images: torch.Tensor, label: str) -> None:
    for preset, table in (("cifar-10-c", CIFAR_10_C), ("imagenet-c", IMAGENET_C)):
        for severity, quality in enumerate(table["jpeg_compression"], start=1):
            diff = (ours_u8(images, preset, severity).double() - pillow_jpeg(images, quality).double()).abs()
            mean, worst, within = float(diff.mean()), float(diff.max()), float((diff <= 2).double().mean())
            where = f"{label}, {preset} severity {severity} (quality {quality})"
            stats = f"mean {mean:.4f}, max {worst:.0f}, within 2 levels {within:.4%}"
            assert mean <= MEAN_ABS_DIFF and worst <= MAX_ABS_DIFF and within >= WITHIN_2_LEVELS, f"{where}: {stats}"


def cifar_images(folder: Path, per_class: int) -> torch.Tensor:
    """The first ``per_class`` test images of each class of the cifar_folder fixture, uint8 (N, 3, 32, 32)."""
    paths = [p for d in sorted((folder / "test").iterdir()) for p in sorted(d.iterdir())[:per_class]]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def cifar(cifar_folder) -> torch.Tensor:
    return cifar_images(cifar_folder, per_class=4)  # 40 real images


@pytest.fixture(scope="module")
def big(cifar) -> torch.Tensor:
    """Four 224 px images: three CIFAR images enlarged (Pillow bicubic: smooth, like a photo at a
    coarser scale) and a 7 x 7 mosaic of CIFAR images (fine texture and hard edges)."""
    enlarged = [
        np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((224, 224), Image.BICUBIC)) for im in cifar[:3]
    ]
    tiles = cifar[torch.arange(49) % len(cifar)]
    mosaic = tiles.reshape(7, 7, 3, 32, 32).permute(2, 0, 3, 1, 4).reshape(3, 224, 224)
    out = torch.from_numpy(np.stack(enlarged)).permute(0, 3, 1, 2)
    return torch.cat([out, mosaic[None]]).contiguous()


# ------------------------------------------------------------------------------------- fidelity


def test_quantisation_tables_are_libjpegs():
    """jpeg_quality_scaling + jpeg_add_quant_table, checked against the tables Pillow writes."""
    for quality in (1, 7, 10, 15, 18, 25, 40, 49, 50, 58, 65, 80, 99, 100):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="JPEG", quality=quality)
        written = Image.open(buf).quantization  # natural order in Pillow
        assert list(written[0]) == [v for row in quant_table(LUMA_TABLE, quality) for v in row], quality
        assert list(written[1]) == [v for row in quant_table(CHROMA_TABLE, quality) for v in row], quality


def test_cifar_images_match_pillow_at_every_preset_quality(cifar):
    assert_matches_pillow(cifar, "40 CIFAR-10 test images")


def test_224px_images_match_pillow_at_every_preset_quality(big):
    assert_matches_pillow(big, "224 px images")


def test_odd_sizes_match_pillow(cifar, big):
    """Sizes that are not whole 8 / 16 px MCUs: libjpeg repeats the last column/row (chroma: the last
    image column up to a whole MCU before averaging); images <= 4 px wide upsample chroma plainly."""
    for h, w in ((30, 30), (37, 41), (17, 9), (9, 23), (1, 1), (3, 4), (5, 2), (2, 6), (223, 221)):
        src = big[:, :, -h:, -w:] if max(h, w) > 32 else cifar[:6, :, -h:, -w:]  # bottom-right: real edges
        assert_matches_pillow(src.contiguous(), f"{h}x{w} crops")


# ----------------------------------------------------------------------------- contract, no codec


def test_batch_does_not_mix_images_and_uint8_equals_float(cifar):
    batch = cifar[:8]
    whole = corrupt(batch, "jpeg_compression", 3, "cifar-10-c")
    for k in range(len(batch)):
        assert torch.equal(whole[k : k + 1], corrupt(batch[k : k + 1], "jpeg_compression", 3, "cifar-10-c"))
    assert torch.equal(whole, corrupt(batch.float() / 255, "jpeg_compression", 3, "cifar-10-c"))
    assert whole.dtype == torch.float32 and torch.equal(whole, torch.round(whole * 255) / 255)  # 8-bit levels
    # a float input between levels is rounded to the nearest level first, as saving a JPEG does
    nudged = (batch.float() + 0.3 * (torch.rand(batch.shape, generator=torch.Generator().manual_seed(0)) - 0.5)) / 255
    assert torch.equal(jpeg_roundtrip(nudged, 58), whole)


def test_no_codec_is_called(cifar, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a codec was called")

    if "torchvision" in sys.modules:  # loaded by something else: make its codecs fail
        for name in ("encode_jpeg", "decode_jpeg", "decode_image"):
            monkeypatch.setattr(sys.modules["torchvision"].io, name, refuse, raising=False)
    else:  # not loaded (it takes seconds): make importing it fail
        monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setattr(Image.Image, "save", refuse)
    monkeypatch.setattr(Image, "open", refuse)
    out = corrupt(cifar[:4], "jpeg_compression", 5, "imagenet-c")
    assert out.shape == (4, 3, 32, 32)
