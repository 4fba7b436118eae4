"""The cifar-10-c preset (the default for images up to 64 px) against its source, Hendrycks' make_cifar_c.py.

* every per-severity constant of every corruption, against the values written out below from
  hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py (commit 8190fe3): a typo in
  ``robustkit/corruptions/presets.py`` fails here;
* the four noise corruptions' statistics on real CIFAR-10 test images: what the noise does to a pixel
  follows from make_cifar_c.py's formulas (x + N(0, c); Poisson(x c) / c; salt and pepper on a fraction
  c; x + x N(0, c)), so the constant can be read back from the corrupted images. Measured on the 100
  images (seeded, so the same on every run): gaussian std / c within 0.4 %, shot c estimate within 0.6 %,
  impulse fraction / c within 1.8 %, speckle std / c within 0.2 % at every severity; the tolerances
  below (2 %, 3 %, 7 %, 2 %) sit above that and below the 10 % between the closest severities.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustkit.corruptions import CORRUPTIONS, corrupt
from robustkit.corruptions.presets import CIFAR_10_C

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# make_cifar_c.py, `c = [...]` of each distortion, severities 1..5, copied verbatim (IMSIZE = 32).
IMSIZE = 32
MAKE_CIFAR_C = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "speckle_noise": [.06, .1, .12, .16, .2],
    "gaussian_blur": [.4, .6, 0.7, .8, 1],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95),
             (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "spatter": [(0.62, 0.1, 0.7, 0.7, 0.5, 0),
                (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
    "contrast": [.75, .5, .4, .3, 0.15],
    "brightness": [.05, .1, .15, .2, .3],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "elastic_transform": [(IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),
                          (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
                          (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
                          (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
                          (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03)],
}


def _flat(v) -> list[float]:
    return [float(a) for a in np.ravel(np.asarray(v, dtype=np.float64))]


def test_every_cifar_10_c_constant_is_make_cifar_c():
    assert set(MAKE_CIFAR_C) == set(CORRUPTIONS) == set(CIFAR_10_C)
    for name, ref in MAKE_CIFAR_C.items():
        ours = CIFAR_10_C[name]
        assert len(ours) == 5, name
        for severity in range(5):
            theirs = ref[severity]
            mine = ours[severity]
            if name == "elastic_transform":   # robustkit keeps fractions of the side; the reference pixels of 32
                mine = [IMSIZE * v for v in mine]
            if name == "zoom_blur":   # the exact zoom factors matter (rounding of crop * factor): compare exactly
                assert np.array_equal(np.asarray(mine, dtype=np.float64), theirs), (name, severity + 1)
                continue
            assert _flat(mine) == pytest.approx(_flat(theirs), rel=1e-12, abs=1e-12), (name, severity + 1)


@pytest.fixture(scope="module")
def cifar_test(cifar_folder) -> torch.Tensor:
    """The 100 real CIFAR-10 test images of the slice (10 per class), decoded with PIL, float in [0, 1]."""
    from PIL import Image

    files = sorted((cifar_folder / "test").glob("*/*.jpg"))
    assert len(files) == 100
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("severity", range(1, 6))
def test_gaussian_noise_std_is_c(cifar_test, severity):
    c = MAKE_CIFAR_C["gaussian_noise"][severity - 1]
    x = cifar_test
    d = corrupt(x, "gaussian_noise", severity, "cifar-10-c", seed=severity) - x
    mid = (x >= 0.35) & (x <= 0.65)   # >= 3.5 c from 0 and 1: clipping is (almost) never reached
    assert mid.sum() > 50_000
    # ~1e5 samples: the std's sampling error is ~0.25 %; adjacent severities differ by >= 10 %
    assert d[mid].std().item() == pytest.approx(c, rel=0.02)
    assert abs(d[mid].mean().item()) < 0.02 * c


@pytest.mark.parametrize("severity", range(1, 6))
def test_shot_noise_variance_is_x_over_c(cifar_test, severity):
    c = MAKE_CIFAR_C["shot_noise"][severity - 1]
    x = cifar_test
    d = corrupt(x, "shot_noise", severity, "cifar-10-c", seed=severity) - x
    band = (x >= 0.1) & (x <= 0.5)    # Poisson(x c) / c never reaches 1 here (c >= 50)
    assert band.sum() > 50_000
    # Var(Poisson(x c) / c) = x / c, so c = sum(x) / sum((y - x)^2)
    c_hat = (x[band].double().sum() / (d[band].double() ** 2).sum()).item()
    assert c_hat == pytest.approx(c, rel=0.03)
    assert abs(d[band].mean().item()) < 0.05 * (0.3 / c) ** 0.5   # unbiased: E[y] = x


@pytest.mark.parametrize("severity", range(1, 6))
def test_impulse_noise_replaces_a_fraction_c_half_salt_half_pepper(cifar_test, severity):
    c = MAKE_CIFAR_C["impulse_noise"][severity - 1]
    x = cifar_test
    y = corrupt(x, "impulse_noise", severity, "cifar-10-c", seed=severity)
    inner = (x > 0) & (x < 1)           # a replaced value is visible unless it was already 0 or 1
    hit = inner & (y != x)
    assert ((y[hit] == 0) | (y[hit] == 1)).all()          # replaced by salt (1) or pepper (0), nothing else
    assert torch.equal(y[inner & ~hit], x[inner & ~hit])  # the rest untouched
    frac = hit.sum().item() / inner.sum().item()
    # ~3e5 values: at c = 0.01 the fraction's sampling error is ~2 % of c
    assert frac == pytest.approx(c, rel=0.07)
    salt = (y[hit] == 1).double().mean().item()
    assert salt == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("severity", range(1, 6))
def test_speckle_noise_relative_std_is_c(cifar_test, severity):
    c = MAKE_CIFAR_C["speckle_noise"][severity - 1]
    x = cifar_test
    d = corrupt(x, "speckle_noise", severity, "cifar-10-c", seed=severity) - x
    band = (x >= 0.1) & (x <= 0.5)      # x (1 + N(0, c)) stays inside [0, 1] here (c <= 0.2)
    rel = d[band] / x[band]
    assert band.sum() > 50_000
    assert rel.std().item() == pytest.approx(c, rel=0.02)
    assert abs(rel.mean().item()) < 0.02 * c


def test_snow_layer_is_truncated_to_8_bits_before_the_blur(monkeypatch):
    """make_cifar_c.py hands ImageMagick's motion blur the PNG of ``(np.clip(layer, 0, 1) * 255).astype(np.uint8)``:
    the thresholded flake layer truncated to 8 bits, not rounded. At severity 2 the zoom is 1 (no resampling),
    so the layer reaching the blur is floor(255 * clip(L, 0, 1)) / 255 of the drawn layer L = loc + scale * z,
    zeroed below the threshold (computed here with numpy from the same N(0, 1) draws: robustkit's snow draws
    the layer first). Values within 1e-3 of a level or of the threshold are left out (float32 vs float64
    rounding); of the rest, about half would differ if rounded."""
    from robustkit.corruptions import _ops, weather

    p = CIFAR_10_C["snow"][1]
    assert p[:4] == MAKE_CIFAR_C["snow"][1][:4] and p[2] == 1
    loc, scale, _, thresh = p[:4]
    n, h, w = 8, 32, 32
    g, twin = torch.Generator().manual_seed(30), torch.Generator().manual_seed(30)
    seen = []
    real = _ops.motion_blur

    def spy(layer, *args, **kwargs):
        seen.append(layer.clone())
        return real(layer, *args, **kwargs)

    monkeypatch.setattr(_ops, "motion_blur", spy)
    weather.snow(torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(31)), p, g, "cifar-10-c")
    monkeypatch.undo()
    assert len(seen) == 1 and seen[0].shape == (n, 1, h, w)
    layer = loc + scale * torch.randn((n, 1, h, w), generator=twin).double().numpy()
    clipped = np.clip(np.where(layer < thresh, 0.0, layer), 0, 1)
    expected = np.floor(255 * clipped) / 255
    level = 255 * clipped
    clear = (np.abs(level - np.round(level)) > 1e-3) & (np.abs(layer - thresh) > 1e-3)
    rounded_differs = clear & (np.round(level) != np.floor(level))
    assert rounded_differs.sum() > 50, rounded_differs.sum()
    assert np.abs(seen[0].double().numpy() - expected)[clear].max() < 1e-4


def test_motion_blur_keeps_a_constant_image_where_the_kernel_passes_the_border():
    """make_cifar_c.py blurs with ImageMagick's MotionBlurImage, a normalised kernel reading clamped edge pixels:
    a constant image stays that constant, however small (hand computation). On 8 px images the kernel (up to
    radius 9) reaches past the border, where imagecorruptions' early stop (the imagenet-c preset's rule) drops
    the remaining weights and darkens the image."""
    x = torch.full((3, 3, 8, 8), 0.6)
    for severity in range(1, 6):
        out = corrupt(x, "motion_blur", severity, "cifar-10-c", seed=severity)
        assert torch.allclose(out, x, atol=1e-5), (severity, out.min().item())
