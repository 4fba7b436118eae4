"""Datasets, class-balanced labeled subsets and batched on-device augmentation.

Every dataset comes back the same way, as a :class:`Dataset` of uint8 ``N,3,H,W`` images (CPU,
contiguous), int64 labels and the class names, so the training loop can put the whole split on the
accelerator once and never touch the CPU again (the airbench recipe):

* ``cifar10`` / ``stl10`` - torchvision's loaders (downloaded into ``data_dir`` when missing; offline
  that fails with a :class:`RobustkitError` that says which file to put where).
* ``digits`` - scikit-learn's bundled 8x8 digits, upscaled to 32x32 RGB; always available offline, the
  dataset of the demo and of the tests.
* ``folder:PATH`` - an ImageFolder tree ``PATH/{train,test}/<class>/<image>``. Decoding tens of
  thousands of JPEGs takes seconds, so the decoded arrays are cached (see :func:`load_dataset`).

Labeled subsets come from :func:`balanced_split`, the per-step order of examples from
:func:`batch_indices` and the crop/flip augmentation from :func:`augment`; all three are pure functions
of their seeds, which is what makes a resumed run redraw exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from robustkit.errors import RobustkitError
from robustkit.io import atomic_path
from robustkit.rng import generator

log = logging.getLogger(__name__)

DatasetName = Literal["cifar10", "stl10", "digits", "folder"]
Split = Literal["train", "test"]

NAMES: tuple[str, ...] = ("cifar10", "stl10", "digits", "folder")
SPLITS: tuple[str, ...] = ("train", "test")

#: Extensions a folder dataset reads; anything else in a class folder (``.txt``, ``.DS_Store``) is ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"})

#: Bumped whenever the layout of a cached folder file changes, so old caches are never misread.
_CACHE_FORMAT = 2  # 2: decoded by Pillow (1: torchvision.io)

_OFFLINE_HINT = (
    "or work offline with the bundled digits or an image folder (train: --dataset digits or --dataset folder:PATH; "
    "fgsm/corrupt: --data folder:PATH; e.g. the extracted cifar10-jpeg75.tar.gz)"
)


# --------------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class DatasetSpec:
    """What ``--dataset`` named: one of :data:`NAMES`, and for ``folder`` the absolute folder path."""

    name: DatasetName
    path: str | None = None

    @property
    def canonical(self) -> str:
        """The string that :func:`parse_spec` maps back to this spec (stored in configs and checkpoints)."""
        return f"folder:{self.path}" if self.name == "folder" else self.name


def parse_spec(spec: str | DatasetSpec) -> DatasetSpec:
    """Parse ``cifar10``, ``stl10``, ``digits`` or ``folder:PATH`` (PATH made absolute, ``~`` expanded).

    The folder is not checked here - a config may name a folder that exists only on the training
    machine; :func:`load_dataset` checks it.
    """
    if isinstance(spec, DatasetSpec):
        return spec
    text = str(spec).strip()
    head, sep, rest = text.partition(":")
    name = head.strip().lower()
    if sep and name == "folder":
        if not rest.strip():
            raise RobustkitError("--dataset folder: needs a path, e.g. --dataset folder:/data/cifar10-jpeg75")
        return DatasetSpec("folder", os.path.abspath(os.path.expanduser(rest.strip())))
    if not sep and name in ("cifar10", "stl10", "digits"):
        return DatasetSpec(name)  # type: ignore[arg-type]
    if name == "folder":
        raise RobustkitError("--dataset folder needs a path: --dataset folder:PATH (PATH holds train/ and test/)")
    raise RobustkitError(
        f"unknown dataset {text!r}: use one of cifar10, stl10, digits or folder:PATH "
        "(an ImageFolder with train/ and test/ inside)"
    )


def default_flip(spec: str | DatasetSpec) -> bool:
    """Whether random horizontal flips suit this data: not for digits (a mirrored 2 is no 2)."""
    return parse_spec(spec).name != "digits"


# --------------------------------------------------------------------------------------------------
# Loading


class Dataset(NamedTuple):
    """One split: ``images`` uint8 (N,3,H,W) contiguous on the CPU, ``labels`` int64 (N,), class names."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(spec: str | DatasetSpec, split: Split, data_dir: str | Path | None = None) -> Dataset:
    """Load one split of a dataset as uint8 tensors on the CPU.

    ``data_dir`` is where torchvision datasets live (default ``$ROBUSTKIT_DATA`` or
    ``~/.cache/robustkit/data``); it is not used by ``digits`` and ``folder``.

    ``folder:PATH``: classes are the sorted sub-folder names of ``PATH/<split>/`` (they must equal the other
    split's when that exists; a folder with only ``train/`` can still be trained from), images come in
    class order, then file-name order. Hidden files and non-image extensions are skipped.
    The splits are cached decoded under ``$ROBUSTKIT_CACHE`` (default ``~/.cache/robustkit``)
    in ``folders/``, keyed by the split folder's absolute path and every image's relative path, size and
    mtime: a second load of an unchanged folder only lists it and reads one file, and changing, adding
    or removing any image invalidates the cache.
    """
    parsed = parse_spec(spec)
    if split not in SPLITS:
        raise RobustkitError(f"unknown split {split!r}: use 'train' or 'test'")
    if parsed.name == "digits":
        return _load_digits(split)
    if parsed.name == "folder":
        assert parsed.path is not None
        return _load_folder(Path(parsed.path), split)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if parsed.name == "cifar10":
        return _load_cifar10(root.expanduser(), split)
    return _load_stl10(root.expanduser(), split)


def default_data_dir() -> Path:
    """``$ROBUSTKIT_DATA`` or ``~/.cache/robustkit/data``: where torchvision datasets are stored."""
    env = os.environ.get("ROBUSTKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustkit" / "data"


def default_cache_dir() -> Path:
    """``$ROBUSTKIT_CACHE`` or ``~/.cache/robustkit``: where decoded folder datasets are cached."""
    env = os.environ.get("ROBUSTKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustkit"


# ---- digits


_DIGITS_TEST_PER_CLASS = 30
_DIGITS_SIZE = 32


def _raw_digits() -> tuple[Tensor, Tensor]:
    """(1797,8,8) float32 pixels in 0..16 and int64 targets, exactly what ``load_digits`` returns.

    Reads the CSV that scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, 64 pixels + target
    per row) without importing scikit-learn, which alone takes ~2 s and would dominate ``robustkit demo``
    start-up and every test; falls back to ``load_digits`` if the file is not where it used to be.
    """
    import gzip
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise RobustkitError("the digits dataset needs scikit-learn: pip install scikit-learn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        with gzip.open(csv, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        pixels, targets = table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    else:  # pragma: no cover - only on a scikit-learn that moved its data
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, targets = bunch.images.astype(np.float32), bunch.target.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(np.ascontiguousarray(targets))


def _load_digits(split: Split) -> Dataset:
    """scikit-learn's 1,797 8x8 digits as 32x32 RGB uint8; a fixed stratified split.

    Pixels (0..16) are scaled to 0..255 after a bilinear upscale (``align_corners=False``) to 32x32,
    the smallest size a CIFAR WideResNet takes, and copied into all three channels.
    Split: for every class c, ``randperm(n_c, generator=robustkit.rng.generator("cpu", "digits-split", c))``
    over that class's images (in scikit-learn's order); the first 30 positions are test, the rest train.
    That gives 300 test and 1,497 train images; both splits are kept in scikit-learn's order. The split
    never depends on any user seed, so every run and every checkpoint sees the same test set.
    """
    pixels, targets = _raw_digits()
    is_test = torch.zeros(len(targets), dtype=torch.bool)
    for c in range(10):
        members = torch.nonzero(targets == c).flatten()
        order = torch.randperm(len(members), generator=generator("cpu", "digits-split", c))
        is_test[members[order[:_DIGITS_TEST_PER_CLASS]]] = True
    keep = is_test if split == "test" else ~is_test
    small = pixels[keep].unsqueeze(1) / 16.0
    big = F.interpolate(small, size=(_DIGITS_SIZE, _DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = (big * 255.0).round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return Dataset(images, targets[keep].contiguous(), [str(c) for c in range(10)])


# ---- torchvision


def _torchvision_dataset(factory, root: Path, archive: str, title: str):
    """Build a torchvision dataset; download only when missing, and turn offline failures into one line."""
    try:
        return factory(download=False)
    except RuntimeError:
        pass  # not there yet (or corrupted): try to fetch it
    log.info("%s not found in %s, downloading", title, root)
    try:
        return factory(download=True)
    except Exception as exc:  # URLError, OSError, checksum RuntimeError, ... all mean the same to the user
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        if (root / archive).is_file():
            raise RobustkitError(
                f"{root / archive} fails torchvision's checksum (incomplete or corrupt) and downloading a fresh "
                f"copy failed ({reason}): replace it with a complete {archive}, {_OFFLINE_HINT}"
            ) from exc
        raise RobustkitError(
            f"{title} is not in {root} and downloading it failed ({reason}): "
            f"put {archive} into {root} (it is extracted on the next run), {_OFFLINE_HINT}"
        ) from exc


def _load_cifar10(root: Path, split: Split) -> Dataset:
    from torchvision.datasets import CIFAR10

    ds = _torchvision_dataset(
        lambda download: CIFAR10(str(root), train=split == "train", download=download),
        root, "cifar-10-python.tar.gz", "CIFAR-10",
    )
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return Dataset(images, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))


_STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _load_stl10(root: Path, split: Split) -> Dataset:
    """STL-10's labeled train (5,000) or test (8,000) split at 96 px; the 100k unlabeled set is not used."""
    from torchvision.datasets import STL10

    ds = _torchvision_dataset(
        lambda download: STL10(str(root), split=split, download=download),
        root, "stl10_binary.tar.gz", "STL-10",
    )
    images = torch.from_numpy(ds.data).contiguous()  # already N,3,96,96
    classes = list(getattr(ds, "classes", None) or _STL10_CLASSES)
    return Dataset(images, torch.as_tensor(ds.labels, dtype=torch.int64), classes)


# ---- folder


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _scan_split(split_dir: Path, classes: list[str]) -> list[tuple[str, int, int, int]]:
    """Every image as (relative path, size, mtime_ns, label), in class order then file-name order."""
    entries: list[tuple[str, int, int, int]] = []
    for label, cls in enumerate(classes):
        found = []
        for e in os.scandir(split_dir / cls):  # os.path, not pathlib: this runs 50,000 times per load
            if e.name.startswith(".") or os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            if not e.is_file():
                continue
            st = e.stat()
            found.append((f"{cls}/{e.name}", st.st_size, st.st_mtime_ns, label))
        if not found:
            raise RobustkitError(
                f"class folder {split_dir / cls} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                "add images or remove the folder"
            )
        entries.extend(sorted(found))
    return entries


def _cache_key(split_dir: Path, entries: list[tuple[str, int, int, int]]) -> tuple[str, str]:
    """(hash of the folder's path, hash of path + all file identities): the cache file's two name parts."""
    from importlib.metadata import version  # not `import PIL`: keep the cache check cheap

    where = hashlib.blake2b(str(split_dir).encode(), digest_size=8).hexdigest()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{_CACHE_FORMAT}\x1f{version('pillow')}\x1f{split_dir}\n".encode())
    for rel, size, mtime_ns, _ in entries:
        h.update(f"{rel}\x1f{size}\x1f{mtime_ns}\n".encode())
    return where, h.hexdigest()


def _load_folder(root: Path, split: Split) -> Dataset:
    """An ImageFolder split, decoded once and then served from the cache."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise RobustkitError(
            f"dataset folder {root} {what}: --dataset folder:PATH needs a folder with train/<class>/*.jpg "
            "and test/<class>/*.jpg (e.g. tar -xzf cifar10-jpeg75.tar.gz -C PATH)"
        )
    split_dir = root / split
    if not split_dir.is_dir():
        raise RobustkitError(
            f"dataset folder {root} has no {split}/ folder: it needs train/<class>/ and test/<class>/ "
            "image folders inside (ImageFolder layout)"
        )
    try:
        classes = _class_dirs(split_dir)
        other_dir = root / ("test" if split == "train" else "train")
        if other_dir.is_dir():
            other = _class_dirs(other_dir)
            if other != classes:
                only_here, only_there = sorted(set(classes) - set(other)), sorted(set(other) - set(classes))
                raise RobustkitError(
                    f"train/ and test/ in {root} hold different classes (only in {split}/: "
                    f"{only_here or 'none'}; only in {other_dir.name}/: {only_there or 'none'}): "
                    "both need the same class folders"
                )
        if not classes:
            raise RobustkitError(
                f"{split_dir} has no class folders: put the images in {split_dir}/<class>/ (ImageFolder layout)"
            )
        entries = _scan_split(split_dir, classes)
    except PermissionError as exc:
        raise RobustkitError(f"cannot read {exc.filename or split_dir}: check its permissions") from exc

    cache_dir = default_cache_dir() / "folders"
    where, key = _cache_key(split_dir.resolve(), entries)
    cache_file = cache_dir / f"{where}-{key}.pt"
    cached = _read_cache(cache_file, len(entries))
    if cached is not None:
        images, labels, cached_classes = cached
        if cached_classes == classes:
            return Dataset(images, labels, classes)

    log.info("decoding %d images from %s (cached in %s afterwards)", len(entries), split_dir, cache_dir)
    images = _decode_all([os.path.join(split_dir, rel) for rel, *_ in entries])
    labels = torch.tensor([label for *_, label in entries], dtype=torch.int64)
    _write_cache(cache_file, where, images, labels, classes)
    return Dataset(images, labels, classes)


def _read_cache(path: Path, expected: int) -> tuple[Tensor, Tensor, list[str]] | None:
    """The cached (images, labels, classes), or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        images, labels, classes = blob["images"], blob["labels"], list(blob["classes"])
        if blob.get("format") != _CACHE_FORMAT or len(images) != expected or len(labels) != expected:
            return None
        return images, labels, classes
    except Exception as exc:  # a truncated or foreign file is a cache miss, not a user error
        log.warning("ignoring unreadable cache %s (%s); decoding again", path, exc)
        return None


def _write_cache(path: Path, where: str, images: Tensor, labels: Tensor, classes: list[str]) -> None:
    """Write atomically, then drop older caches of the same folder (they can never match again)."""
    try:
        with atomic_path(path) as tmp:
            torch.save({"format": _CACHE_FORMAT, "images": images, "labels": labels, "classes": classes}, tmp)
        for old in path.parent.glob(f"{where}-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:  # a read-only cache location only costs speed
        log.warning("could not write dataset cache %s (%s); the next run decodes again", path, exc)


def open_rgb(path: str):
    """One image file as an RGB PIL image, ``Image.open(path).convert("RGB")`` (what torchvision's
    ``ImageFolder`` and the standard training/evaluation scripts read); one clear error for a file that is
    missing, unreadable or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:   # FileNotFoundError, PermissionError, UnidentifiedImageError, truncated files
        what = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else (exc.strerror or str(exc))
        raise RobustkitError(f"cannot decode image {path} ({what}): fix or remove the file") from None


def _decode_one(path: str) -> Tensor:
    """One image file -> uint8 (3,H,W) RGB, decoded by Pillow (:func:`open_rgb`). On baseline JPEGs the
    pixels equal torchvision.io's (both are libjpeg-turbo's defaults); its decoders are deprecated since 0.29."""
    import numpy as np

    return torch.from_numpy(np.asarray(open_rgb(path)).copy()).permute(2, 0, 1).contiguous()


def _decode_all(paths: list[str]) -> Tensor:
    """Decode every file into one preallocated uint8 (N,3,H,W) tensor.

    Images whose size differs from the most common one are resized to it (bilinear, antialiased), so a
    folder of mixed sizes still becomes one tensor.
    """
    workers = max(1, min(8, os.cpu_count() or 1))
    chunk = 256
    groups = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while it decodes
        decoded = [img for part in pool.map(lambda ps: [_decode_one(p) for p in ps], groups) for img in part]
    size = Counter(tuple(img.shape[1:]) for img in decoded).most_common(1)[0][0]
    out = torch.empty((len(decoded), 3, *size), dtype=torch.uint8)
    for i, img in enumerate(decoded):
        if tuple(img.shape[1:]) != size:
            img = (
                F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
            )
        out[i] = img
    return out


# --------------------------------------------------------------------------------------------------
# Statistics and labeled subsets


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (population) std of uint8 images, in [0,1] units.

    Works in chunks of ``chunk`` images, accumulating sums in float64 on the images' device, so 50,000
    CIFAR images never need a float copy of the whole split.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"channel_stats expects (N,3,H,W) images, got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("channel_stats needs at least one image")
    total = torch.zeros(3, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros(3, dtype=torch.float64, device=images.device)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0)
    m, s = (mean / 255.0).tolist(), (var.sqrt() / 255.0).tolist()
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])


def balanced_split(labels: Tensor, n_labels: int | None, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Pick ``n_labels / num_classes`` labeled examples of every class; the rest is the unlabeled pool.

    Returns ``(labeled_idx, unlabeled_idx)``, both sorted ascending int64 CPU tensors. For class c the
    choice is the first k entries of ``randperm(n_c, generator=generator("cpu", seed, "labeled", c))``
    over that class's positions, so for one seed smaller subsets are nested in larger ones (the 250-label
    set is inside the 1,000-label set) and the result depends on nothing but the arguments.
    ``n_labels=None`` labels everything and leaves the unlabeled pool empty.
    """
    labels = labels.detach().to("cpu", torch.int64).flatten()
    n = len(labels)
    if n_labels is None:
        return torch.arange(n, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    per_class = n_labels // num_classes
    counts = torch.bincount(labels, minlength=num_classes)
    most = int(counts.min()) * num_classes   # the largest class-balanced subset of this split
    if n_labels < num_classes:
        raise RobustkitError(
            f"--labels {n_labels} is fewer than the {num_classes} classes: use at least {num_classes} "
            "(a multiple of the number of classes) or --labels all"
        )
    if n_labels > most:
        fewest = int(counts.argmin())
        why = (f"is more than the {n} images in the training split" if n_labels > n else
               f"needs {-(-n_labels // num_classes)} images of every class, but class {fewest} has only "
               f"{int(counts[fewest])}")
        raise RobustkitError(f"--labels {n_labels} {why}: use at most {most} or --labels all")
    if n_labels % num_classes:
        lower = n_labels - n_labels % num_classes
        upper = lower + num_classes
        use = f"{lower} or {upper}" if upper <= most else f"{lower} (at most {most} here)"
        raise RobustkitError(
            f"--labels {n_labels} is not a multiple of the {num_classes} classes (an equal number per class): "
            f"use {use}"
        )
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(members), generator=generator("cpu", seed, "labeled", c))
        chosen.append(members[order[:per_class]])
    labeled = torch.cat(chosen).sort().values
    is_labeled = torch.zeros(n, dtype=torch.bool)
    is_labeled[labeled] = True
    unlabeled = torch.nonzero(~is_labeled).flatten()
    return labeled, unlabeled


# --------------------------------------------------------------------------------------------------
# Batches and augmentation


@functools.lru_cache(maxsize=8)
def _epoch_perm(n: int, seed: int, epoch: int, device: str = "cpu") -> Tensor:
    """The order of epoch ``epoch`` on ``device`` (cached: consecutive steps mostly hit the same one or two
    epochs, so the permutation crosses to the accelerator once per epoch, not once per step)."""
    perm = torch.randperm(n, generator=generator("cpu", seed, "epoch", epoch))
    return perm if device == "cpu" else perm.to(device)


def batch_indices(n: int, batch_size: int, seed: int, step: int, device: str | torch.device = "cpu") -> Tensor:
    """Positions (into a pool of ``n`` items) of the examples in training step ``step``.

    The example stream is the concatenation of one permutation per epoch, epoch e drawn from
    ``generator("cpu", seed, "epoch", e)``; step s takes stream positions ``[s*B, (s+1)*B)``. Every epoch
    visits every item exactly once, a batch may straddle epochs (and span several when B > n), and the
    result is a pure function of the arguments, so a resumed run continues the exact stream.
    Give the labeled and the unlabeled pool different seeds if they should not move in lockstep.
    The permutations are drawn on the CPU (same stream on every device) and kept on ``device``; the
    result lives there, so a training step on a GPU takes its indices without a host-to-device copy.
    """
    if n <= 0 or batch_size <= 0 or step < 0:
        raise ValueError(f"batch_indices needs n > 0, batch_size > 0, step >= 0 (got {n}, {batch_size}, {step})")
    start, stop = step * batch_size, (step + 1) * batch_size
    parts = []
    pos = start
    while pos < stop:
        epoch, offset = divmod(pos, n)
        take = min(n - offset, stop - pos)
        parts.append(_epoch_perm(n, seed, epoch, str(torch.device(device)))[offset : offset + take])
        pos += take
    return torch.cat(parts)  # a fresh tensor: callers can never modify the cached permutations


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map coordinates in [-size+1, 2*size-2] into [0, size) like reflect padding (edge not repeated)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def augment(images: Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True,
            part: tuple[int, int] | None = None) -> Tensor:
    """Reflect-pad by ``pad``, take a random crop of the original size, flip half of them horizontally.

    ``images`` uint8 (B,3,H,W) on any device; returns float32 in [0,1] on the same device. The padded
    image is never materialised: each output row/column is mapped back to its source row/column (crop
    offset, flip and reflection folded into one index) and fetched with one batched ``gather``.
    Random numbers (per image: row offset and column offset in [0, 2*pad], then a flip bit, in that
    order) come from ``generator``, on the generator's device: give a generator on the images' device
    (``robustkit.rng.generator(device, ...)``) and nothing crosses between host and device. A CPU
    generator with device images also works (the draws are then copied over, which makes the host wait).
    With ``flip=False`` the flip draws are still made (and ignored), so the crops stay the same.
    ``part=(start, total)``: ``images`` are positions ``start, start+1, ...`` of a batch of ``total`` images
    (one rank's share under torchrun): the draws are made for all ``total`` images and these images get
    theirs, so the shares of all ranks together equal the whole batch augmented in one process.
    """
    if images.dim() != 4:
        raise ValueError(f"augment expects (B,C,H,W) images, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if pad < 0 or pad >= h or pad >= w:
        raise ValueError(f"pad must be in [0, {min(h, w) - 1}] for {h}x{w} images, got {pad}")
    start, total = part if part is not None else (0, b)
    if start < 0 or start + b > total:
        raise ValueError(f"part={part} does not hold {b} images")
    gdev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (total,), generator=generator, device=gdev)[start:start + b]
    dx = torch.randint(0, 2 * pad + 1, (total,), generator=generator, device=gdev)[start:start + b]
    flips = torch.randint(0, 2, (total,), generator=generator, dtype=torch.bool, device=gdev)[start:start + b]
    if not flip:
        flips = torch.zeros_like(flips)
    device = images.device
    dy, dx, flips = dy.to(device), dx.to(device), flips.to(device)
    rows = _reflect(torch.arange(h, device=device) + dy[:, None] - pad, h)  # (B,H)
    cols_base = torch.arange(w, device=device).expand(b, w)
    cols_base = torch.where(flips[:, None], (w - 1) - cols_base, cols_base)
    cols = _reflect(cols_base + dx[:, None] - pad, w)  # (B,W)
    source = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w)  # flat source pixel per output pixel
    out = images.reshape(b, c, h * w).gather(2, source.expand(b, c, h * w)).view(b, c, h, w)
    return out.to(torch.float32).div_(255.0)


def limit_indices(n_total: int, limit: int | None) -> Tensor | None:
    """``--limit N`` / ``--eval-limit N``: the first N images of a fixed (seeded) shuffle of a split, in
    index order; ``None`` when everything is used.

    A plain "first N" would be biased on folder datasets, whose test images are sorted by class.
    """
    if limit is None or limit >= n_total:
        return None
    if limit < 1:
        raise RobustkitError(f"--limit must be >= 1, got {limit}")
    return torch.randperm(n_total, generator=generator("cpu", "robustkit-limit"))[:limit].sort().values
