"""The last step of the released datasets' makers: how each corrupted image was stored.

Hendrycks' makers did not hand the corrupted float images to the networks they evaluated; they stored
them, and every published CIFAR-10-C / ImageNet-C number is measured on what was stored:

* ``make_cifar_c.py`` appends ``np.uint8(corruption(img))`` to the ``.npy`` arrays: the float output in
  0..255 is **truncated** to 8 bits (``np.uint8`` of a float drops the fraction).
* ``make_imagenet_c.py`` saves ``Image.fromarray(np.uint8(img))`` with ``quality=85, optimize=True``: the
  same truncation, then a **baseline JPEG at quality 85** (Pillow's defaults: 4:2:0 chroma, the IJG tables;
  ``optimize`` only re-codes the Huffman tables, so the decoded pixels are those of ``quality=85``).

Where a corruption's own output is already 8-bit in the makers' code (Pillow's JPEG round trip and resize,
ImageMagick's motion blur read back from a PNG), ``np.uint8`` changes nothing; robustkit's float version of
those lies within float rounding of (jpeg) or close to (pixelate, motion blur) the maker's integers, so it
is **rounded** to the nearest level instead of truncated.

:func:`store` applies that step to robustkit's float output (``corrupt(..., storage="released")``):

* levels ``floor(255 x + 2**-13)`` (truncation; the small tolerance puts a value that float32 arithmetic
  left a few ulps below a whole level, where the makers' float64 arithmetic gives the whole level, on that
  level), or ``round(255 x)`` for the corruptions above;
* for the ``imagenet-c`` preset, those levels through :func:`robustkit.corruptions.jpeg.jpeg_roundtrip_u8`
  at quality 85 (libjpeg-turbo's pixels, bit for bit, computed in torch on any device);
* back to float32 levels ``k / 255``.
"""

from __future__ import annotations

import torch

from ..errors import RobustkitError
from . import _ops, jpeg

Tensor = torch.Tensor

STORAGES = ("float", "released")
RELEASED_JPEG_QUALITY = 85        # make_imagenet_c.py: save(path, quality=85, optimize=True)
ROUNDED = frozenset({"jpeg_compression", "pixelate", "motion_blur"})   # 8-bit already in the makers' code
_TRUNCATION_TOLERANCE = 2.0 ** -13   # in levels (0..255): a few float32 ulps of 255


def check_storage(storage: str) -> str:
    """``storage`` normalised ("float" or "released"); anything else is a one-line error."""
    key = str(storage).strip().lower()
    if key not in STORAGES:
        raise RobustkitError(f"unknown storage {storage!r}; use float (the corrupted images as computed) or released "
                             "(stored as the released CIFAR-10-C / ImageNet-C files were)")
    return key


def levels(x: Tensor, name: str) -> Tensor:
    """The 8-bit levels (as float, 0..255) that the makers stored for robustkit's float output ``x`` in [0, 1]
    of corruption ``name``: truncated, or rounded for the corruptions in :data:`ROUNDED`."""
    if name in ROUNDED:
        return _ops.levels8(x)
    return torch.mul(x, 255.0).add_(_TRUNCATION_TOLERANCE).floor_().clamp_(0, 255)


def store(x: Tensor, name: str, preset: str) -> Tensor:
    """``x`` (N, 3, H, W) float in [0, 1], corrupted by ``name`` with ``preset``, as the released files hold it:
    8-bit levels, and for ``imagenet-c`` a JPEG at quality 85 on top; float32 ``k / 255``, same device."""
    q = levels(x, name)
    if preset == "imagenet-c":
        q = jpeg.jpeg_roundtrip_u8(q, RELEASED_JPEG_QUALITY)
    return _ops.unit_float(q)
