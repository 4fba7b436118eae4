"""Data sources for evaluation: what ``--data`` names -> uint8 images (N, 3, H, W), labels, class names.

    cifar10 | stl10 | digits   the test split, as for training
    folder:PATH                an ImageFolder: PATH/val, PATH/test or PATH itself holds <class>/<image>;
                               for ImageNet-sized models Resize(256) + CenterCrop(224) (bilinear,
                               antialiased: torchvision's evaluation preprocessing), none for CIFAR-sized
    cifar10-c:PATH             Hendrycks' released CIFAR-10-C (.npy files), see released.py
    cifar100-c:PATH, imagenet-c:PATH   likewise

Decode once: a preprocessed folder is written to one raw uint8 file in the cache (``$ROBUSTKIT_CACHE``,
``eval/``), keyed by the folder's path, every file's name, size and mtime, the preprocessing, the decoder
and the class list, and read back memory-mapped (``torch.from_file``), so 50,000 ImageNet images (7.5 GB at
224 px) are decoded once, never need to fit in RAM, and every epsilon and corruption cell reads the same bytes.

Decoder (``decode``): ``"cpu"`` (the default) is the pipeline of torchvision's standard ImageNet evaluation,
pixel for pixel: Pillow opens the file (``Image.open(f).convert("RGB")``, what ``ImageFolder`` does), Pillow
resizes (``transforms.Resize(256)``: bilinear, antialiased) and crops (``CenterCrop(224)``); a thread pool
runs it on all cores (Pillow releases the GIL while it decodes and resizes). ``"gpu"`` decodes JPEGs with
nvJPEG on a CUDA GPU (``torchvision.io.decode_jpeg``) and resizes them there: faster, but other pixels
(measured on an H100: a mean of 1.53/255 from the CPU pipeline after Resize(256) + CenterCrop(224)), so
only on request (``--decode gpu``).
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

_FORMAT = 2   # 2: the CPU decoder is Pillow's pipeline (1 resized tensors with torchvision)
DECODERS = ("cpu", "gpu")


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


def _cache_paths(split_dir: Path, entries, resize, crop, classes, decode: str) -> tuple[Path, str]:
    from robustkit.data import default_cache_dir

    where = hashlib.blake2b(str(split_dir.resolve()).encode(), digest_size=8).hexdigest()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{_FORMAT}\x1f{split_dir.resolve()}\x1f{resize}\x1f{crop}\x1f{decode}\x1f{','.join(classes)}\n".encode())
    for rel, size, mtime, _ in entries:
        h.update(f"{rel}\x1f{size}\x1f{mtime}\n".encode())
    return default_cache_dir() / "eval" / f"{where}-{h.hexdigest()}", where


def decode_cpu(path: str, resize: int | None, crop: int | None) -> torch.Tensor:
    """One file through torchvision's standard evaluation pipeline on PIL images -> uint8 (3, H, W):
    ``Image.open(path).convert("RGB")``, ``transforms.Resize(resize)`` (Pillow bilinear, antialiased),
    ``transforms.CenterCrop(crop)``. The calls are torchvision's own, so the pixels are theirs."""
    import numpy as np
    from torchvision.transforms import functional as TF

    from robustkit.data import open_rgb

    img = open_rgb(path)
    if resize is not None:
        img = TF.resize(img, [resize], interpolation=TF.InterpolationMode.BILINEAR)
    if crop is not None:
        img = TF.center_crop(img, [crop, crop])
    # HWC -> CHW in numpy: the decode threads run no torch op (16 threads each starting torch's intra-op pool
    # oversubscribe the cores), and numpy copies without holding the GIL
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))


def check_decode(decode: str, device: str | torch.device | None) -> torch.device | None:
    """The device nvJPEG runs on for ``decode="gpu"`` (None for the CPU decoder); one clear error otherwise."""
    if decode not in DECODERS:
        raise RobustkitError(f"--decode must be cpu or gpu, got {decode!r}")
    if decode == "cpu":
        return None
    if not torch.cuda.is_available():
        raise RobustkitError("--decode gpu decodes JPEGs with nvJPEG on a CUDA GPU and none is visible: use --decode cpu "
                             "(the default: Pillow, as torchvision's standard evaluation)")
    dev = torch.device(device) if device is not None and str(device) != "auto" else torch.device("cuda")
    return dev if dev.type == "cuda" else torch.device("cuda")


DECODED = {"count": 0}  # images decoded by this process (tests check that a cached folder decodes nothing)


def load_folder(root: str | Path, *, resize: int | None = None, crop: int | None = None,
                classes: list[str] | None = None, decode: str = "cpu",
                device: str | torch.device | None = None) -> EvalData:
    """An ImageFolder for evaluation, preprocessed and cached (see the module docstring).

    ``decode="cpu"``: Pillow + torchvision's transforms on PIL images, on all cores. ``decode="gpu"``: JPEGs
    are decoded by nvJPEG on the GPU (``device``, else the current CUDA device) and resized there with
    torchvision's tensor transforms, in chunks; other formats go the CPU way. The decoder is part of the
    cache key: the two give different pixels.
    """
    import warnings

    import numpy as np

    gpu = check_decode(decode, device)
    split_dir = split_folder(Path(root).expanduser().resolve())
    classes, entries = _scan(split_dir, classes)
    base, where = _cache_paths(split_dir, entries, resize, crop, classes, decode)
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
    first = decode_cpu(paths[0], resize, crop)
    c, h, w = first.shape  # without a crop the first image sets the size; others are resized to it
    n = len(paths)
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = raw_path.with_name(raw_path.name + f".tmp-{os.getpid()}")
    mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, c, h, w))

    def fit(i: int, img: torch.Tensor) -> torch.Tensor:
        if tuple(img.shape) == (c, h, w):
            return img
        if crop is None and resize is None:
            import torch.nn.functional as F

            return F.interpolate(img[None].float(), size=(h, w), mode="bilinear", antialias=True,
                                 align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        raise RobustkitError(f"{paths[i]} came out {tuple(img.shape)} after preprocessing, not {(c, h, w)}")

    def work(idx: list[int]) -> None:
        for i in idx:
            mm[i] = fit(i, decode_cpu(paths[i], resize, crop)).numpy()

    def gpu_chunk(idx: list[int]) -> list[int]:
        """Decode the JPEGs among ``idx`` on the GPU; returns the indices left for the CPU."""
        try:   # deprecated since torchvision 0.29 (superseded by TorchCodec)
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            raise RobustkitError("--decode gpu needs torchvision.io.decode_jpeg, which this torchvision lacks: "
                                 "use --decode cpu") from None

        jpeg = [i for i in idx if paths[i].lower().endswith((".jpg", ".jpeg"))]
        if not jpeg:
            return idx
        data = [torch.frombuffer(bytearray(Path(paths[i]).read_bytes()), dtype=torch.uint8) for i in jpeg]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=gpu)
        except RuntimeError:
            return idx  # an odd JPEG (CMYK, progressive variant ...): the CPU path reads all of them
        for i, img in zip(jpeg, decoded):
            mm[i] = fit(i, preprocess(img, resize, crop)).cpu().numpy()
        done = set(jpeg)
        return [i for i in idx if i not in done]

    try:
        todo = list(range(n))
        if gpu is not None:
            todo = [i for k in range(0, n, 256) for i in gpu_chunk(list(range(k, min(n, k + 256))))]
        workers = max(1, min(16, os.cpu_count() or 1))
        step = max(1, min(64, -(-len(todo) // workers)))   # chunks: a few per worker, not one task per image
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, [todo[k:k + step] for k in range(0, len(todo), step)]))
        mm.flush()

        os.replace(tmp, raw_path)
        meta_tmp = meta_path.with_name(meta_path.name + f".tmp-{os.getpid()}")
        meta_tmp.write_text(json.dumps({"format": _FORMAT, "shape": [n, c, h, w], "folder": str(split_dir),
                                        "resize": resize, "crop": crop, "decode": decode, "classes": classes}))
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
                   decode: str = "cpu", device: str | torch.device | None = None) -> EvalData:
    """The clean test images a data spec names (not a released corrupted set: see released.py)."""
    from robustkit.data import load_dataset, parse_spec

    head, sep, rest = str(spec).partition(":")
    if head.lower() == "folder" and sep:
        if not rest.strip():
            raise RobustkitError("--data folder: needs a path, e.g. --data folder:/data/imagenet/val")
        r, c = default_preprocessing(input_size, resize, crop)
        classes = read_classes_file(classes_file) if classes_file else None
        return load_folder(rest, resize=r, crop=c, classes=classes, decode=decode, device=device)
    if is_released(spec):
        raise RobustkitError(f"{spec} is a released corrupted dataset: use it with robustkit corrupt, not fgsm")
    parsed = parse_spec(spec)
    data = load_dataset(parsed, "test", data_dir)
    images = data.images
    if resize is not None or crop is not None:
        images = torch.stack([preprocess(img, resize, crop) for img in images])
    classes = read_classes_file(classes_file) if classes_file else list(data.classes)
    return EvalData(images, data.labels, classes, parsed.canonical)
