"""ImageNet-C style corruptions in torch: batched, on the images' own device, seeded.

    x_c = corrupt(x, "fog", severity=3, preset="cifar-10-c", seed=0)   # x: (N, 3, H, W) in [0, 1]

All 19 corruptions of ``imagecorruptions.get_corruption_names('all')`` (15 common + 4 extra), at
severities 1..5, with two parameter presets: ``imagenet-c`` (the numbers imagecorruptions uses,
tuned for 224 px) and ``cifar-10-c`` (those of Hendrycks' make_cifar_c.py, tuned for 32 px).
Randomness comes from one ``torch.Generator`` on the images' device seeded from (seed, name), so the
same call gives the same images, and every image in a batch gets its own independent draws.
Deliberate differences from the references are listed in docs/corruptions.md.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import RobustkitError
from ..rng import generator
from . import blur, digital, noise, weather
from .presets import PRESETS, params
from .storage import STORAGES, check_storage, store

__all__ = [
    "CORRUPTIONS",
    "COMMON",
    "EXTRA",
    "PRESETS",
    "STORAGES",
    "check_storage",
    "corrupt",
    "resolve_preset",
    "parse_corruptions",
    "parse_severities",
]

CorruptionFn = Callable[[torch.Tensor, object, torch.Generator, str], torch.Tensor]

# order of imagecorruptions.get_corruption_names("all")
_FUNCTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": digital.brightness,
    "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
    "speckle_noise": noise.speckle_noise,
    "gaussian_blur": blur.gaussian_blur,
    "spatter": weather.spatter,
    "saturate": digital.saturate,
}

CORRUPTIONS: tuple[str, ...] = tuple(_FUNCTIONS)
COMMON: tuple[str, ...] = CORRUPTIONS[:15]
EXTRA: tuple[str, ...] = CORRUPTIONS[15:]
DETERMINISTIC: frozenset[str] = frozenset(
    {"gaussian_blur", "defocus_blur", "zoom_blur", "brightness", "contrast", "saturate", "pixelate", "jpeg_compression"}
)
AUTO_MAX_SIZE = 64  # "auto" picks cifar-10-c up to this image side, imagenet-c above


def resolve_preset(preset: str, image_size: int) -> str:
    """The concrete preset for ``preset`` ("auto", "imagenet-c" or "cifar-10-c") and an image side."""
    key = preset.strip().lower()
    if key == "auto":
        return "cifar-10-c" if image_size <= AUTO_MAX_SIZE else "imagenet-c"
    if key in PRESETS:
        return key
    raise RobustkitError(f"unknown corruption preset {preset!r}; use one of: auto, {', '.join(PRESETS)}")


def parse_corruptions(text: str | None) -> list[str]:
    """Corruption names from ``"all"`` (also None), ``"common"``, ``"extra"`` or a comma list
    (groups may be mixed in, duplicates are dropped, order is kept); an empty text is an error."""
    if text is None:
        return list(CORRUPTIONS)
    groups = {"all": CORRUPTIONS, "common": COMMON, "extra": EXTRA}
    out: list[str] = []
    items = text.split(",")
    if any(not item.strip() for item in items) and any(item.strip() for item in items):
        raise RobustkitError(f"--corruptions {text!r} has an empty item: write a comma list like fog,frost")
    for item in items:
        key = item.strip().lower().replace("-", "_")
        if not key:
            continue
        names = groups.get(key, (key,) if key in _FUNCTIONS else None)
        if names is None:
            raise RobustkitError(
                f"unknown corruption {item.strip()!r}; use all, common, extra or any of: {', '.join(CORRUPTIONS)}"
            )
        out.extend(n for n in names if n not in out)
    if not out:   # "", " , ": nothing named
        raise RobustkitError(f"--corruptions is empty ({text!r}): give all, common, extra or a comma list, e.g. fog,frost")
    return out


def parse_severities(text: str | int) -> list[int]:
    """Severities from ``"1..5"`` (inclusive range), ``"1,3"`` or ``"2"``; each must be in 1..5."""
    raw = str(text).strip()
    hint = "write severities like 1..5, 1,3 or 2 (each between 1 and 5)"
    try:
        if ".." in raw:
            lo, hi = (int(p) for p in raw.split(".."))
            values = list(range(lo, hi + 1))
        else:
            values = [int(p) for p in raw.split(",")]
    except ValueError:
        raise RobustkitError(f"malformed severities {raw!r}; {hint}") from None
    if not values or any(not 1 <= v <= 5 for v in values):
        raise RobustkitError(f"severities {raw!r} are outside 1..5 or empty; {hint}")
    return sorted(set(values))


def _check(images: torch.Tensor, name: str, severity: int, preset: str) -> str:
    if name not in _FUNCTIONS:
        raise RobustkitError(f"unknown corruption {name!r}; use one of: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= int(severity) <= 5:
        raise RobustkitError(f"severity {severity!r} is not an integer in 1..5")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise RobustkitError(f"corrupt expects an (N, 3, H, W) image tensor, got {shape}")
    return resolve_preset(preset, max(images.shape[-2:]))


def corrupt(
    images: torch.Tensor, name: str, severity: int, preset: str = "imagenet-c", seed: int = 0,
    storage: str = "float",
) -> torch.Tensor:
    """``images`` (N, 3, H, W) corrupted by ``name`` at ``severity`` (1..5): float32 in [0, 1], same
    shape and device. Float input is read as [0, 1], uint8 as [0, 255]; grey (N, 1, H, W) images
    are corrupted as RGB and averaged back to one channel. ``preset`` may be "auto" (by image size).

    ``storage="released"`` returns the images as the released datasets stored them: 8-bit levels
    (CIFAR-10-C's ``np.uint8``), and for the imagenet-c preset a JPEG at quality 85 on top (ImageNet-C's
    files); see :mod:`robustkit.corruptions.storage`. ``"float"`` (default): as computed.
    """
    stored = check_storage(storage) == "released"
    preset = _check(images, name, severity, preset)
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float().clamp(0, 1)
    grey = x.shape[1] == 1
    if grey:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[0] == 0:
        return x.mean(1, keepdim=True) if grey else x.clone()
    g = generator(x.device, seed, "corrupt", name)
    out = _FUNCTIONS[name](x.contiguous(), params(preset, name, int(severity)), g, preset).clamp(0, 1)
    if stored:
        out = store(out, name, preset)
    return out.mean(1, keepdim=True) if grey else out
