"""Data sources for evaluation: what ``--data`` names -> uint8 images (N, 3, H, W), labels, class names.

    cifar10 | stl10 | digits   the test split, as for training
    folder:PATH                an ImageFolder: PATH/val, PATH/test or PATH itself holds <class>/<image>;
                               for ImageNet-sized models Resize(256) + CenterCrop(224) (bilinear,
                               antialiased: torchvision's evaluation preprocessing), none for CIFAR-sized
    cifar10-c:PATH             Hendrycks' released CIFAR-10-C (.npy files), see released.py
    cifar100-c:PATH, imagenet-c:PATH   likewise

Decode once: a preprocessed folder is written to one raw uint8 file in the cache (``$ROBUSTKIT_CACHE``,
``eval/``), keyed by the folder's path, every file's name, size and mtime, the preprocessing and the class
list, and read back memory-mapped (``torch.from_file``), so 50,000 ImageNet images (7.5 GB at 224 px) are
decoded once, never need to fit in RAM, and every epsilon and corruption cell reads the same bytes.
Decoding runs on all cores (a thread pool; torchvision's decoders release the GIL), or, evaluating on
CUDA, with nvJPEG on the GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from robustkit.errors import RobustkitError

_FORMAT = 1


@dataclass
class EvalData:
    images: torch.Tensor        # uint8 (N, 3, H, W), CPU (memory-mapped for folders)
    labels: torch.Tensor        # int64 (N,)
    classes: list[str]
    spec: str                   # canonical data spec (goes into the eval JSON)


def default_preprocessing(input_size: int | None, resize: int | None, crop: int | None) -> tuple[int | None, int | None]:
    """(resize, crop): the user's, else Resize(round(size / 0.875)) + CenterCrop(size) for models that
    expect 100 px or more (256 + 224 for ImageNet models), else nothing (CIFAR-sized models)."""
    if resize is not None or crop is not None:
        return resize, crop
    if input_size is not None and input_size >= 100:
        return int(round(input_size / 0.875)), int(input_size)
    return None, None


def preprocess(img: torch.Tensor, resize: int | None, crop: int | None) -> torch.Tensor:
    """uint8 (3, H, W) -> Resize(shorter side = resize, bilinear, antialias) -> CenterCrop(crop): the calls
    torchvision's own ImageNet evaluation preset (``weights.transforms()``) makes on tensors."""
    from torchvision.transforms import functional as TF

    if resize is not None:
        img = TF.resize(img, [resize], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if crop is not None:
        img = TF.center_crop(img, [crop, crop])
    return img


def read_classes_file(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise RobustkitError(f"--classes {p} does not exist: give a text file with one class name per line")
    names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if len(set(names)) != len(names):
        raise RobustkitError(f"--classes {p} names a class twice")
    if not names:
        raise RobustkitError(f"--classes {p} is empty")
    return names


def split_folder(root: Path) -> Path:
    """PATH/val, PATH/test, or PATH itself (the folder whose sub-folders are classes)."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise RobustkitError(f"data folder {root} {what}: --data folder:PATH needs PATH[/val or /test]/<class>/<images>")
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    return root


def _scan(split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[str, int, int, int]]]:
    from robustkit.data import IMAGE_EXTENSIONS

    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise RobustkitError(f"{split_dir} has no class folders: put images in {split_dir}/<class>/ (ImageFolder layout)")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise RobustkitError(f"{split_dir} has class folders not in --classes: {', '.join(unknown[:5])}"
                                 f"{' ...' if len(unknown) > 5 else ''}")
    index = {c: i for i, c in enumerate(classes)}
    entries = []
    for cls in found:
        files = []
        for e in os.scandir(split_dir / cls):
            if e.name.startswith(".") or os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS or not e.is_file():
                continue
            st = e.stat()
            files.append((f"{cls}/{e.name}", st.st_size, st.st_mtime_ns, index[cls]))
        entries += sorted(files)
    if not entries:
        raise RobustkitError(f"{split_dir} holds no images")
    return classes, entries


def _cache_paths(split_dir: Path, entries, resize, crop, classes) -> tuple[Path, str]:
    from robustkit.data import default_cache_dir

    where = hashlib.blake2b(str(split_dir.resolve()).encode(), digest_size=8).hexdigest()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{_FORMAT}\x1f{split_dir.resolve()}\x1f{resize}\x1f{crop}\x1f{','.join(classes)}\n".encode())
    for rel, size, mtime, _ in entries:
        h.update(f"{rel}\x1f{size}\x1f{mtime}\n".encode())
    return default_cache_dir() / "eval" / f"{where}-{h.hexdigest()}", where


def _decode(path: str) -> torch.Tensor:
    from robustkit.data import _decode_one

    return _decode_one(path)


DECODED = {"count": 0}  # images decoded by this process (tests check that a cached folder decodes nothing)


def load_folder(root: str | Path, *, resize: int | None = None, crop: int | None = None,
                classes: list[str] | None = None, device: str | torch.device | None = None) -> EvalData:
    """An ImageFolder for evaluation, preprocessed and cached (see the module docstring).

    ``device`` CUDA: JPEGs are decoded by nvJPEG on the GPU (``torchvision.io.decode_jpeg``) and resized
    there, in chunks; other formats on the CPU. The decoder is part of the cache key (nvJPEG and libjpeg
    may round a pixel differently).
    """
    gpu = device is not None and torch.device(device).type == "cuda"
    import warnings

    import numpy as np

    split_dir = split_folder(Path(root).expanduser().resolve())
    classes, entries = _scan(split_dir, classes)
    base, where = _cache_paths(split_dir, entries, resize, crop, classes + (["<nvjpeg>"] if gpu else []))
    meta_path, raw_path = base.with_suffix(".json"), base.with_suffix(".u8")
    labels = torch.tensor([label for *_, label in entries], dtype=torch.int64)
    spec = f"folder:{split_dir}"
    if meta_path.is_file() and raw_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            n, c, h, w = meta["shape"]
            if n == len(entries) and raw_path.stat().st_size == n * c * h * w:
                images = torch.from_file(str(raw_path), shared=False, size=n * c * h * w, dtype=torch.uint8)
                return EvalData(images.view(n, c, h, w), labels, classes, spec)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    paths = [os.path.join(split_dir, rel) for rel, *_ in entries]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = preprocess(_decode(paths[0]), resize, crop)
    c, h, w = first.shape  # without a crop the first image sets the size; others are resized to it
    n = len(paths)
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = raw_path.with_name(raw_path.name + f".tmp-{os.getpid()}")
    mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, c, h, w))

    def work(i: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = preprocess(_decode(paths[i]), resize, crop)
        if tuple(img.shape) != (c, h, w):
            if crop is None and resize is None:
                import torch.nn.functional as F

                img = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", antialias=True,
                                    align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            else:
                raise RobustkitError(f"{paths[i]} came out {tuple(img.shape)} after preprocessing, not {(c, h, w)}")
        mm[i] = img.numpy()

    def gpu_chunk(idx: list[int]) -> list[int]:
        """Decode the JPEGs among ``idx`` on the GPU; returns the indices left for the CPU."""
        try:   # deprecated since torchvision 0.29 (superseded by TorchCodec): without it, the CPU decodes
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            return idx

        jpeg = [i for i in idx if paths[i].lower().endswith((".jpg", ".jpeg"))]
        if not jpeg:
            return idx
        data = [torch.frombuffer(bytearray(Path(paths[i]).read_bytes()), dtype=torch.uint8) for i in jpeg]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=torch.device(device))
        except RuntimeError:
            return idx  # an odd JPEG (CMYK, progressive variant ...): the CPU path reads all of them
        for i, img in zip(jpeg, decoded):
            out = preprocess(img, resize, crop)
            if tuple(out.shape) != (c, h, w):
                raise RobustkitError(f"{paths[i]} came out {tuple(out.shape)} after preprocessing, not {(c, h, w)}")
            mm[i] = out.cpu().numpy()
        return [i for i in idx if i not in set(jpeg)]

    try:
        todo = list(range(n))
        if gpu:
            todo = [i for k in range(0, n, 256) for i in gpu_chunk(list(range(k, min(n, k + 256))))]
        with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
            list(pool.map(work, todo))
        mm.flush()

        os.replace(tmp, raw_path)
        meta_tmp = meta_path.with_name(meta_path.name + f".tmp-{os.getpid()}")
        meta_tmp.write_text(json.dumps({"format": _FORMAT, "shape": [n, c, h, w], "folder": str(split_dir),
                                        "resize": resize, "crop": crop, "classes": classes}))
        os.replace(meta_tmp, meta_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    DECODED["count"] += n
    for old in raw_path.parent.glob(f"{where}-*"):  # older caches of this folder can never match again
        if old.stem != base.name:
            old.unlink(missing_ok=True)
    images = torch.from_file(str(raw_path), shared=False, size=n * c * h * w, dtype=torch.uint8)
    return EvalData(images.view(n, c, h, w), labels, classes, spec)


def is_released(spec: str | None) -> bool:
    return bool(spec) and str(spec).split(":", 1)[0].lower() in ("cifar10-c", "cifar100-c", "imagenet-c")


def load_eval_data(spec: str, *, input_size: int | None = None, data_dir: str | None = None,
                   resize: int | None = None, crop: int | None = None, classes_file: str | None = None,
                   device: str | torch.device | None = None) -> EvalData:
    """The clean test images a data spec names (not a released corrupted set: see released.py)."""
    from robustkit.data import load_dataset, parse_spec

    head, sep, rest = str(spec).partition(":")
    if head.lower() == "folder" and sep:
        r, c = default_preprocessing(input_size, resize, crop)
        classes = read_classes_file(classes_file) if classes_file else None
        return load_folder(rest, resize=r, crop=c, classes=classes, device=device)
    if is_released(spec):
        raise RobustkitError(f"{spec} is a released corrupted dataset: use it with robustkit corrupt, not fgsm")
    parsed = parse_spec(spec)
    data = load_dataset(parsed, "test", data_dir)
    images = data.images
    if resize is not None or crop is not None:
        images = torch.stack([preprocess(img, resize, crop) for img in images])
    classes = read_classes_file(classes_file) if classes_file else list(data.classes)
    return EvalData(images, data.labels, classes, parsed.canonical)
