"""robustkit.corruptions: contract, seeding, strength, and fidelity to imagecorruptions.

Fidelity tolerances (imagenet-c preset, reference = imagecorruptions 1.1.2, values in 0..255):

* deterministic corruptions: |ours*255 - reference| <= 1 everywhere, mean <= 0.6. The reference
  returns ``np.uint8(float)``, i.e. truncates, so a 0..1 level gap is expected; nothing larger.
* random corruptions with injected randomness (the reference's own draws fed to our function):
  spatter, elastic_transform and motion_blur agree to <= 1 level (spatter: 0.5).
* random corruptions with independent randomness: the mean absolute change from the clean image
  agrees per severity within REL_TOL below (relative). Both sides are seeded, so the test is
  deterministic; the tolerances cover the sampling spread of 16 images (frost: 5 textures drawn per
  image, and severities share draws, so its spread is widest).

imagecorruptions crashes on today's numpy/scikit-image in gaussian_blur, glass_blur and fog; the
``reference`` fixture shims those calls (``multichannel=`` and ``np.float_``) for the test only.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import robustkit
from robustkit.corruptions import (
    COMMON,
    CORRUPTIONS,
    DETERMINISTIC,
    EXTRA,
    PRESETS,
    corrupt,
    parse_corruptions,
    parse_severities,
    resolve_preset,
)
from robustkit.corruptions import _ops, digital, weather
from robustkit.corruptions.presets import CIFAR_10_C, IMAGENET_C

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_corruptions import synthetic_images  # noqa: E402  (natural-ish uint8 images: colour gratings + noise)
from robustkit.errors import RobustkitError

RANDOM = tuple(n for n in CORRUPTIONS if n not in DETERMINISTIC)
REL_TOL = {  # relative tolerance on mean |change| per severity, 16 images of 32 px
    "gaussian_noise": 0.05,
    "shot_noise": 0.05,
    "impulse_noise": 0.08,
    "speckle_noise": 0.05,
    "glass_blur": 0.08,
    "motion_blur": 0.10,
    "snow": 0.12,
    "frost": 0.25,
    "fog": 0.15,
    "elastic_transform": 0.05,
    "spatter": 0.25,  # heavy-tailed (few drops, large change); the injected test below is exact
}
N_IMAGES = {"spatter": 96, "impulse_noise": 64}  # cheap in the reference and heavy-tailed (spatter) or few
# pixels changed at severity 1 (impulse_noise: 3 %, so 16 images leave its mean within 8 % only by luck): more images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def x32() -> torch.Tensor:
    return synthetic_images(8, 32, seed=1).float() / 255


@pytest.fixture(scope="module")
def reference():
    """imagecorruptions with its crashes on current numpy/scikit-image shimmed (module scope)."""
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:   # a missing reference is a broken environment, not a pass: fail, never skip
        import imagecorruptions as ic
    except Exception as exc:  # noqa: BLE001  (ImportError, or its pkg_resources import failing otherwise)
        pytest.fail(f"imagecorruptions cannot be imported ({type(exc).__name__}: {exc}): the fidelity tests need "
                    "it; install the dev extras (pip install -e '.[dev]'; it also needs setuptools' pkg_resources)",
                    pytrace=False)
    import skimage.filters

    import imagecorruptions.corruptions as icc

    mp = pytest.MonkeyPatch()
    plain = skimage.filters.gaussian

    def gaussian(image, sigma=1, multichannel=None, **kw):
        if multichannel:
            kw["channel_axis"] = -1
        return plain(image, sigma=sigma, **kw)

    mp.setattr(icc, "gaussian", gaussian)
    mp.setattr(np, "float_", np.float64, raising=False)
    # impulse_noise calls skimage's random_noise, which draws from its own unseeded generator: seed it from
    # numpy's global one, so the tests' np.random.seed makes the reference repeatable
    noise = icc.sk.util.random_noise
    seed_arg = "rng" if "rng" in inspect.signature(noise).parameters else "seed"
    mp.setattr(icc.sk.util, "random_noise",
               lambda image, mode="gaussian", **kw: noise(image, mode=mode, **{seed_arg: np.random.randint(2**31)}, **kw))
    yield ic
    mp.undo()


def run_reference(ic, images: torch.Tensor, name: str, severity: int) -> np.ndarray:
    """imagecorruptions on each image (uint8 NCHW) -> float array (N, H, W, 3) in 0..255."""
    return np.stack(
        [ic.corrupt(im.permute(1, 2, 0).numpy().copy(), severity=severity, corruption_name=name) for im in images]
    ).astype(np.float64)


def to_hwc255(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).double().numpy() * 255


# ---------------------------------------------------------------------------------------- names


def test_names_match_imagecorruptions(reference):
    assert list(CORRUPTIONS) == reference.get_corruption_names("all")
    assert list(COMMON) == reference.get_corruption_names("common")
    assert list(EXTRA) == reference.get_corruption_names("validation")
    assert len(CORRUPTIONS) == 19 and PRESETS == ("imagenet-c", "cifar-10-c")
    assert robustkit.corrupt is corrupt and robustkit.CORRUPTIONS == CORRUPTIONS
    for table in (IMAGENET_C, CIFAR_10_C):
        assert set(table) == set(CORRUPTIONS) and all(len(v) == 5 for v in table.values())


def test_every_imagenet_c_constant_is_imagecorruptions(reference):
    """Each corruption's five severities (its `c = [...]`; elastic_transform's `alpha = [...]`) read from the
    reference's source and evaluated there, against IMAGENET_C: a swapped or mistyped pair inside a statistical
    test's tolerance (frost's weights, say) cannot hide."""
    import ast
    import inspect

    def plain(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            return tuple(plain(e) for e in (v.tolist() if isinstance(v, np.ndarray) else v))
        return round(float(v), 9)

    import importlib

    tree = ast.parse(inspect.getsource(importlib.import_module("imagecorruptions.corruptions")))
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    for name in CORRUPTIONS:
        var = "alpha" if name == "elastic_transform" else "c"
        assigns = [n for n in ast.walk(functions[name]) if isinstance(n, ast.Assign)
                   and any(getattr(t, "id", None) == var for t in n.targets)]
        node = assigns[0].value
        node = node.value if isinstance(node, ast.Subscript) else node   # `[...][severity - 1]`
        theirs = eval(compile(ast.Expression(node), name, "eval"), {"np": np})   # noqa: S307 (the reference's source)
        assert plain(theirs) == plain(IMAGENET_C[name]), name


@pytest.mark.parametrize("n", [1, 2, 5, 32])
def test_the_affine_warps_border_fold_is_opencvs_reflect_101(n):
    """cifar-10-c's elastic_transform warps with cv2.warpAffine(borderMode=BORDER_REFLECT_101): mirror about the
    edge pixel, which numpy calls "reflect" (not "symmetric", which repeats the edge pixel); also many periods
    away from the image."""
    k = 3 * n + 2
    coords = torch.arange(-k, n + k)
    expected = np.pad(np.arange(n), k, mode="reflect") if n > 1 else np.zeros(n + 2 * k, dtype=np.int64)
    assert digital._fold_reflect101(coords, n).tolist() == expected.tolist()


# ------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_contract_determinism_and_strength(name, preset, x32):
    x = torch.cat([x32, x32[:1]])  # the last image repeats the first: it must get its own draws
    strength, twins = [], []
    for severity in range(1, 6):
        y = corrupt(x, name, severity, preset, seed=7)
        assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, corrupt(x, name, severity, preset, seed=7)), "same seed, same images"
        other = corrupt(x, name, severity, preset, seed=8)
        if name in DETERMINISTIC:
            assert torch.equal(y, other)
            assert torch.equal(y[0], y[-1])
        else:
            assert not torch.equal(y, other), "a different seed must give different corruptions"
        twins.append(torch.equal(y[0], y[-1]))
        strength.append((y - x).abs().mean().item())
    assert min(strength) > 0
    # two nearby motion angles can round to the same taps at one severity, but not at all five
    assert all(twins) if name in DETERMINISTIC else not all(twins), "images need independent draws"
    # make_cifar_c.py's elastic shrinks the affine jitter faster than the elastic part grows; the
    # makers' glass blur with imagenet-c numbers is flat on 32 px images (imagecorruptions on these
    # images: 0.1054 at severity 1, 0.1050 at 5), and so is ours since it copies as they do
    if (name, preset) not in (("elastic_transform", "cifar-10-c"), ("glass_blur", "imagenet-c")):
        assert strength[4] > strength[0], strength


def test_uint8_grey_and_empty_inputs(x32):
    u8 = (x32 * 255).round().to(torch.uint8)
    assert torch.equal(corrupt(u8, "fog", 2, seed=1), corrupt(u8.float() / 255, "fog", 2, seed=1))
    grey = corrupt(x32[:, :1], "motion_blur", 3, seed=0)
    assert grey.shape == (8, 1, 32, 32) and grey.dtype == torch.float32
    empty = corrupt(x32[:0], "snow", 1)
    assert empty.shape == (0, 3, 32, 32)


def test_strength_grows_in_the_noise_and_blur_families(x32):
    for preset in PRESETS:
        for name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "zoom_blur"):
            s = [(corrupt(x32, name, k, preset, seed=0) - x32).abs().mean().item() for k in range(1, 6)]
            assert s == sorted(s), (name, preset, s)


def test_auto_preset_and_sizes():
    assert resolve_preset("auto", 32) == "cifar-10-c"
    assert resolve_preset("auto", 64) == "cifar-10-c"
    assert resolve_preset("auto", 96) == "imagenet-c"
    assert resolve_preset("CIFAR-10-C", 224) == "cifar-10-c"
    with pytest.raises(RobustkitError, match="auto, imagenet-c, cifar-10-c"):
        resolve_preset("imagenet", 32)
    x = synthetic_images(2, 64).float() / 255
    auto = corrupt(x, "gaussian_noise", 3, preset="auto", seed=0)
    assert torch.equal(auto, corrupt(x, "gaussian_noise", 3, preset="cifar-10-c", seed=0))
    # AUTO_MAX_SIZE is an image *side*: a 32 x 96 image has a 96 px side, so "auto" is imagenet-c for it
    wide = torch.rand(2, 3, 32, 96, generator=torch.Generator().manual_seed(0))
    auto = corrupt(wide, "contrast", 3, preset="auto")
    assert torch.equal(auto, corrupt(wide, "contrast", 3, preset="imagenet-c"))
    assert not torch.equal(auto, corrupt(wide, "contrast", 3, preset="cifar-10-c"))
    # a non-square, non-power-of-two image goes through every corruption
    y = torch.rand(2, 3, 40, 56)
    for name in CORRUPTIONS:
        assert corrupt(y, name, 5, preset="imagenet-c").shape == y.shape


# --------------------------------------------------------------------------------------- parsing


def test_parse_corruptions():
    assert parse_corruptions(None) == list(CORRUPTIONS)
    assert parse_corruptions("all") == list(CORRUPTIONS)
    assert parse_corruptions("common") == list(COMMON)
    assert parse_corruptions("extra") == list(EXTRA)
    assert parse_corruptions("fog, gaussian-noise,fog") == ["fog", "gaussian_noise"]
    with pytest.raises(RobustkitError, match="gaussian_noise, shot_noise"):
        parse_corruptions("fog,rain")
    with pytest.raises(RobustkitError, match="is empty"):
        parse_corruptions(" , ")
    for text in ("fog,,frost", "fog,", ",fog"):   # as --eps, --severities and --resolutions refuse them
        with pytest.raises(RobustkitError, match="has an empty item"):
            parse_corruptions(text)


def test_parse_severities():
    assert parse_severities("1..5") == [1, 2, 3, 4, 5]
    assert parse_severities("1,3") == [1, 3]
    assert parse_severities("2") == [2]
    assert parse_severities(" 3..4 ") == [3, 4]
    for bad in ("0", "6", "1..6", "a", "1,,2", "5..1", "", "1.5"):
        with pytest.raises(RobustkitError, match="severities"):
            parse_severities(bad)


def test_corrupt_errors(x32):
    with pytest.raises(RobustkitError, match="unknown corruption"):
        corrupt(x32, "rain", 1)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(RobustkitError, match="severity"):
            corrupt(x32, "fog", severity)
    with pytest.raises(RobustkitError, match=r"\(N, 3, H, W\)"):
        corrupt(x32[0], "fog", 1)
    with pytest.raises(RobustkitError, match="preset"):
        corrupt(x32, "fog", 1, preset="tiny")


# -------------------------------------------------------------------------------------- fidelity


def test_pixelate_is_pillows_8bit_resize_bit_for_bit():
    """pixelate = the makers' two Pillow resizes of a PIL image (BOX down; NEAREST up for imagenet-c, BOX for
    cifar-10-c), Pillow's fixed-point 8-bit arithmetic and rounding included: equal on every pixel, at every
    severity of both presets, square sizes (the datasets' 32 and 224 px; odd ones), uint8 and float (k / 255)
    input. Non-square images: Pillow 13 runs a two-pass BOX resize vertical pass first for some shapes (the
    Pillow of 2018 that made the released datasets ran the horizontal pass first, as robustkit does), so there
    a pixel may differ by one level."""
    from PIL import Image

    for h, w in ((32, 32), (224, 224), (37, 37), (101, 101), (45, 61), (101, 13)):
        images = synthetic_images(2, max(h, w), seed=h + w)[..., :h, :w].contiguous()
        for preset, table in (("imagenet-c", IMAGENET_C), ("cifar-10-c", CIFAR_10_C)):
            up = Image.NEAREST if preset == "imagenet-c" else Image.BOX
            for severity, c in enumerate(table["pixelate"], start=1):
                ref = np.stack([np.asarray(Image.fromarray(a).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), up))
                                for a in images.permute(0, 2, 3, 1).numpy()])
                for x in (images, images.float() / 255):
                    ours = corrupt(x, "pixelate", severity, preset) * 255
                    assert torch.equal(ours, torch.round(ours))           # 8-bit levels, as a PIL image holds them
                    diff = np.abs(ours.permute(0, 2, 3, 1).double().numpy() - ref)
                    assert diff.max() <= (0 if h == w else 1), (h, w, preset, severity, diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_match_imagecorruptions(name, reference):
    for images in (synthetic_images(6, 32, seed=2), synthetic_images(2, 64, seed=3)):
        for severity in range(1, 6):
            ref = run_reference(reference, images, name, severity)
            ours = to_hwc255(corrupt(images, name, severity, "imagenet-c"))
            diff = np.abs(ours - ref)
            assert diff.max() <= 1.0 + 1e-3 and diff.mean() <= 0.6, (name, severity, diff.max(), diff.mean())


@pytest.mark.parametrize("name", RANDOM)
def test_random_strength_matches_imagecorruptions(name, reference):
    images = synthetic_images(N_IMAGES.get(name, 16), 32, seed=4)
    clean = images.permute(0, 2, 3, 1).double().numpy()
    np.random.seed(0)
    for severity in range(1, 6):
        ref_images = run_reference(reference, images, name, severity)
        # imagecorruptions' spatter divides 0 by 0 when no drop survives the threshold and returns a
        # black image (about 1 % at severity 1, 32 px); ours leaves such an image clean. Compare
        # strength on the images the reference did not blank.
        kept = ref_images.reshape(len(images), -1).max(1) > 0
        ref = np.abs(ref_images - clean)[kept].mean()
        ours = np.abs(to_hwc255(corrupt(images, name, severity, "imagenet-c", seed=0)) - clean)[kept].mean()
        assert abs(ours - ref) <= REL_TOL[name] * ref, (name, severity, ref, ours)


def test_spatter_matches_with_the_same_liquid_layer(reference, monkeypatch):
    from PIL import Image

    import imagecorruptions.corruptions as icc

    rng = np.random.default_rng(5)
    for size in (32, 64):
        img = synthetic_images(1, size, seed=size)[0].permute(1, 2, 0).numpy().copy()
        for severity in range(1, 6):
            p = IMAGENET_C["spatter"][severity - 1]
            liquid = rng.normal(size=(size, size), loc=p[0], scale=p[1])
            monkeypatch.setattr(icc.np.random, "normal", lambda *a, **k: liquid.copy())
            ref = np.asarray(icc.spatter(Image.fromarray(img), severity), dtype=np.float64)
            monkeypatch.undo()
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            liq = torch.from_numpy(liquid).float()[None, None]
            ours = to_hwc255(weather.spatter_from_liquid(x, liq, p).clamp(0, 1))[0]
            assert np.abs(ours - ref).max() <= 0.5, (size, severity)


@pytest.mark.parametrize("h, w", [(64, 64), (40, 72)])
def test_elastic_matches_with_the_same_noise(h, w, reference, monkeypatch):
    """The same U(-1, 1) numbers on both sides, mapped through the reference's own
    ``np.random.uniform(-max_dx, max_dx)``: imagecorruptions scales the noise by 0.5 % of the HEIGHT on both
    axes and smooths it with sigma = 1 % of (height, width); a 40 x 72 image tells height from width."""
    from PIL import Image

    import imagecorruptions.corruptions as icc

    rng = np.random.default_rng(6)
    img = synthetic_images(1, max(h, w), seed=9)[0, :, :h, :w].permute(1, 2, 0).numpy().copy()
    for severity in (1, 3, 5):
        u = rng.uniform(-1, 1, size=(2, h, w))
        draws = iter(u)  # the reference draws dx, then dy
        monkeypatch.setattr(icc.np.random, "uniform", lambda low, high, size: low + (high - low) * (next(draws) + 1) / 2)
        ref = np.asarray(icc.elastic_transform(Image.fromarray(img), severity), dtype=np.float64)
        monkeypatch.undo()
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        noise = torch.from_numpy(u).float()[None]
        p = IMAGENET_C["elastic_transform"][severity - 1]
        ours = to_hwc255(digital.elastic_from_noise(x, noise, p, "imagenet-c").clamp(0, 1))[0]
        assert np.abs(ours - ref).max() <= 1e-2, severity


def test_motion_blur_matches_at_the_same_angle(reference, monkeypatch):
    from PIL import Image

    import imagecorruptions.corruptions as icc

    images = synthetic_images(4, 32, seed=10)
    angles = [-44.0, -12.5, 7.0, 38.9]
    for severity in (1, 5):  # severity 5 at 32 px exercises the reference's early stop at the border
        radius, sigma = IMAGENET_C["motion_blur"][severity - 1]
        refs = []
        for img, angle in zip(images, angles):
            monkeypatch.setattr(icc.np.random, "uniform", lambda *a, angle=angle, **k: angle)
            refs.append(icc.motion_blur(Image.fromarray(img.permute(1, 2, 0).numpy().copy()), severity))
            monkeypatch.undo()
        ours = _ops.motion_blur(images.float() / 255, radius, sigma, torch.tensor(angles), stop_at_border=True)
        diff = np.abs(to_hwc255(ours.clamp(0, 1)) - np.stack(refs))
        assert diff.max() <= 1e-2, (severity, diff.max())


def _twins(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Two generators in the same state: one for robustkit's corruption function, one to repeat its draws
    (same calls, same shapes, same order) and hand them to the reference."""
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


def test_snow_matches_with_the_same_draws(reference, monkeypatch):
    """imagecorruptions' snow, fed robustkit's draws: the flake layer's N(0, 1) numbers (mapped through the
    reference's own loc and scale) and the blur angle's U(0, 1) number (mapped through its own
    ``np.random.uniform(-135, -45)``). Guards the angle range, the brightening ``max(x, 1.5 gray + 0.5)``
    (saturated blue and red corners, where x wins) and the second copy of the layer rotated by 180 degrees
    (``np.rot90(k=2)``). robustkit draws the layer, then the angles (``weather.snow``)."""
    import imagecorruptions.corruptions as icc

    images = synthetic_images(3, 48, seed=22)
    images[:, :, :10, :10] = torch.tensor([0, 0, 255], dtype=torch.uint8).view(3, 1, 1)
    images[:, :, -10:, -10:] = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)
    n, _, h, w = images.shape
    for severity in (1, 3, 5):
        p = IMAGENET_C["snow"][severity - 1]
        g, twin = _twins(severity)
        ours = weather.snow(images.float() / 255, p, g, "imagenet-c").clamp(0, 1)
        z = torch.randn((n, 1, h, w), generator=twin).double().numpy()
        u = torch.rand(n, generator=twin).double().numpy()
        refs = []
        for i, img in enumerate(images):
            monkeypatch.setattr(icc.np.random, "normal", lambda size, loc, scale, i=i: loc + scale * z[i, 0])
            monkeypatch.setattr(icc.np.random, "uniform", lambda low, high, i=i: low + (high - low) * u[i])
            refs.append(icc.snow(img.permute(1, 2, 0).numpy().copy(), severity))
            monkeypatch.undo()
        diff = np.abs(to_hwc255(ours) - np.stack(refs))
        # both round the blurred layer to 8 bits: a float rounding tie may move a few pixels by one level
        assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.05, (severity, diff.max(), diff.mean())


def test_frost_matches_with_the_same_draws(reference, monkeypatch):
    """imagecorruptions' frost, fed robustkit's draws: its ``np.random.randint(5)`` gets the texture index,
    its two crop offsets ``np.random.randint(0, rows left)`` and ``randint(0, columns left)`` get
    ``low + floor(u * (high - low))`` of robustkit's U(0, 1) pair (row first). Guards the texture's 1.1 x
    rescale, which offset crops rows and which columns, and the blend. robustkit draws the indices, then the
    offsets (``weather.frost``). The reference resizes with OpenCV's 8-bit bicubic (whole levels), robustkit
    in float: measured max 0.20 and 0.38, mean 0.09 and 0.17 levels (severities 1 and 5)."""
    import imagecorruptions.corruptions as icc

    images = synthetic_images(10, 48, seed=31)
    n = len(images)
    for severity in (1, 5):
        g, twin = _twins(40 + severity)
        ours = weather.frost(images.float() / 255, IMAGENET_C["frost"][severity - 1], g, "imagenet-c").clamp(0, 1)
        idx = torch.randint(0, 5, (n,), generator=twin).tolist()
        u = torch.rand((n, 2), generator=twin).double().numpy()
        assert sorted(set(idx)) == [0, 1, 2, 3, 4], idx   # every texture is compared
        refs = []
        for i, img in enumerate(images):
            calls = iter([idx[i], 0, 1])

            def randint(low, high=None, i=i, calls=calls):
                j = next(calls)
                return j if high is None else low + int(np.floor(u[i, j] * (high - low)))

            monkeypatch.setattr(icc.np.random, "randint", randint)
            refs.append(icc.frost(img.permute(1, 2, 0).numpy().copy(), severity))
            monkeypatch.undo()
        diff = np.abs(to_hwc255(ours) - np.stack(refs).astype(np.float64))
        assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.3, (severity, diff.max(), diff.mean())


def test_motion_blur_angle_is_drawn_as_imagecorruptions_draws_it(reference, monkeypatch):
    """imagecorruptions draws the angle as ``np.random.uniform(-45, 45)``: fed robustkit's U(0, 1) number
    through that call, it gives robustkit's image (an angle range of [0, 90) or [-90, 0) would not).
    robustkit draws one U(0, 1) number per image (``blur.motion_blur``)."""
    from robustkit.corruptions import blur

    import imagecorruptions.corruptions as icc

    images = synthetic_images(4, 48, seed=23)
    for severity in (1, 4):
        g, twin = _twins(50 + severity)
        ours = blur.motion_blur(images.float() / 255, IMAGENET_C["motion_blur"][severity - 1], g, "imagenet-c")
        u = torch.rand(len(images), generator=twin).double().numpy()
        refs = []
        for i, img in enumerate(images):
            monkeypatch.setattr(icc.np.random, "uniform", lambda low, high, i=i: low + (high - low) * u[i])
            refs.append(icc.motion_blur(img.permute(1, 2, 0).numpy().copy(), severity))
            monkeypatch.undo()
        diff = np.abs(to_hwc255(ours.clamp(0, 1)) - np.stack(refs).astype(np.float64))
        assert diff.max() <= 1e-2, (severity, diff.max())   # measured: 8e-5


def test_fog_matches_with_the_same_fractal(reference, monkeypatch):
    """imagecorruptions' fog, its ``plasma_fractal`` replaced by robustkit's maps for the same generator
    state (the maps themselves: next test). The reference asks for a map of the next power of two of the
    longer side (64 for these 24 x 40 images) and crops [:H, :W]; each image is rescaled by its OWN max /
    (max + strength). One image is dark (max 0.3), so a batch-wide max would show, and the images are not
    square, so a map sized or cropped by the shorter side would too."""
    import imagecorruptions.corruptions as icc

    images = synthetic_images(3, 40, seed=25)[:, :, :24, :].contiguous()
    images[1] = (images[1].float() * 0.3).to(torch.uint8)
    n, _, h, w = images.shape
    for severity in (1, 5):
        strength, decay = IMAGENET_C["fog"][severity - 1]
        g, twin = _twins(60 + severity)
        ours = weather.fog(images.float() / 255, (strength, decay), g, "imagenet-c").clamp(0, 1)
        size = icc.next_power_of_2(max(h, w))
        maps = weather.plasma_fractal(n, size, decay, twin, torch.device("cpu")).double().numpy()
        refs = []
        for i, img in enumerate(images):
            def fractal(mapsize, wibbledecay, i=i):
                assert (mapsize, wibbledecay) == (size, decay)
                return maps[i].copy()

            monkeypatch.setattr(icc, "plasma_fractal", fractal)
            refs.append(icc.fog(img.permute(1, 2, 0).numpy().copy(), severity))
            monkeypatch.undo()
        diff = np.abs(to_hwc255(ours) - np.stack(refs))
        assert diff.max() < 1e-3, (severity, diff.max())


def test_plasma_fractal_matches_with_the_same_draws(reference, monkeypatch):
    """The diamond-square map: imagecorruptions adds ``wibble * np.random.uniform(-wibble, wibble, shape)``
    per point (three draws per level: squares, then the two diamond sets; wibble = 100, divided by the decay
    after each level), i.e. noise uniform in [-wibble**2, wibble**2). robustkit's draws for the same
    generator state, repeated as ``uniform_(-wibble**2, wibble**2)`` calls of the same shapes, are handed to the
    reference (divided by its wibble): a different amplitude or draw order in robustkit gives another map."""
    import imagecorruptions.corruptions as icc

    size, decay = 32, 1.7
    g, twin = _twins(26)
    ours = weather.plasma_fractal(1, size, decay, g, torch.device("cpu"))[0]
    draws, step, wibble = [], size, 100.0
    while step >= 2:
        k = size // step
        draws += [torch.empty(k, k).uniform_(-wibble**2, wibble**2, generator=twin).double().numpy() for _ in range(3)]
        step //= 2
        wibble /= decay
    queue = iter(draws)

    def uniform(low, high, shape):
        d = next(queue)
        assert d.shape == shape and low == -high
        return d / high

    monkeypatch.setattr(icc.np.random, "uniform", uniform)
    ref = icc.plasma_fractal(mapsize=size, wibbledecay=decay)
    monkeypatch.undo()
    assert next(queue, None) is None
    assert np.abs(ours.double().numpy() - ref).max() < 1e-4


@pytest.mark.parametrize("name", ["saturate", "brightness"])
def test_hsv_corruptions_on_grey_and_black_pixels_match_imagecorruptions(name, reference):
    """skimage's rgb2hsv gives grey pixels (R = G = B) hue 0 and saturation 0, so saturate's shift
    (severities 4, 5) tints them red; black pixels (V = 0) become grey of value ``shift`` under brightness.
    The synthetic images of the fidelity test above have neither kind of pixel."""
    images = synthetic_images(2, 32, seed=27)
    images[:, :, :12, :] = images[:, :1, :12, :]   # grey rows, brightness varying
    images[:, :, 12:18, :] = 0                      # black rows
    for severity in range(1, 6):
        ref = run_reference(reference, images, name, severity)
        diff = np.abs(to_hwc255(corrupt(images, name, severity, "imagenet-c")) - ref)
        assert diff.max() <= 1.0 + 1e-3, (name, severity, diff.max())


# ------------------------------------------------------------------ cifar-10-c deterministic parity


def test_cifar_preset_deterministic_against_library_calls(reference):
    """make_cifar_c.py's deterministic corruptions are plain library calls; check ours against them."""
    from PIL import Image
    from scipy.ndimage import zoom as scizoom
    from skimage.filters import gaussian

    import imagecorruptions.corruptions as icc

    images = synthetic_images(3, 32, seed=11)
    x = images.float() / 255
    arrays = [im.permute(1, 2, 0).numpy().copy() for im in images]
    for severity in range(1, 6):
        sigma = CIFAR_10_C["gaussian_blur"][severity - 1]
        ref = np.stack([gaussian(a / 255.0, sigma=sigma, channel_axis=-1) for a in arrays]) * 255
        assert np.abs(to_hwc255(corrupt(x, "gaussian_blur", severity, "cifar-10-c")) - ref).max() < 1e-2

        c = CIFAR_10_C["pixelate"][severity - 1]
        ref = np.stack(
            [np.asarray(Image.fromarray(a).resize((int(32 * c),) * 2, Image.BOX).resize((32, 32), Image.BOX)) for a in arrays]
        )
        assert np.abs(np.round(to_hwc255(corrupt(x, "pixelate", severity, "cifar-10-c"))) - ref).max() == 0  # Pillow's pixels

        radius, alias = CIFAR_10_C["defocus_blur"][severity - 1]
        kernel = icc.disk(radius=radius, alias_blur=alias)
        import cv2

        ref = np.stack([np.stack([cv2.filter2D(a[..., d] / 255.0, -1, kernel) for d in range(3)], -1) for a in arrays])
        ours = to_hwc255(corrupt(x, "defocus_blur", severity, "cifar-10-c"))
        assert np.abs(ours - np.clip(ref, 0, 1) * 255).max() < 1e-2

        acc = np.zeros((3, 32, 32, 3))
        for z in CIFAR_10_C["zoom_blur"][severity - 1]:  # centre-trimmed clipped zoom of make_cifar_c.py
            ch = int(np.ceil(32 / z))
            top = (32 - ch) // 2
            zoomed = np.stack([scizoom(a[top : top + ch, top : top + ch] / 255.0, (z, z, 1), order=1) for a in arrays])
            trim = (zoomed.shape[1] - 32) // 2
            acc += zoomed[:, trim : trim + 32, trim : trim + 32]
        ref = (np.stack(arrays) / 255.0 + acc) / (len(CIFAR_10_C["zoom_blur"][severity - 1]) + 1) * 255
        assert np.abs(to_hwc255(corrupt(x, "zoom_blur", severity, "cifar-10-c")) - ref).max() < 1e-2


def test_frost_textures_come_from_imagecorruptions():
    textures = weather._frost_textures_cpu()
    assert len(textures) == 5 and all(t.dtype == torch.uint8 and t.shape[0] == 3 for t in textures)
    assert textures[0].shape[-2:] == (600, 900)
