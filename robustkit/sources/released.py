"""Released corrupted datasets: the images Hendrycks & Dietterich published, evaluated as they are.

    cifar10-c:PATH / cifar100-c:PATH   PATH/<corruption>.npy, each (5 x N, 32, 32, 3) uint8: severities 1..5
                                       in blocks of N (10,000) images, in order; PATH/labels.npy (5 x N,)
    imagenet-c:PATH                    PATH/<corruption>/<severity>/<class>/*.JPEG (already 224 x 224)

``cell(corruption, severity)`` returns that cell's uint8 (N, 3, H, W) images and labels; nothing is
generated. The .npy files are memory-mapped, so a cell reads only its block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustkit.errors import RobustkitError, first_line

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_TITLES = {"cifar10-c": "CIFAR-10-C", "cifar100-c": "CIFAR-100-C", "imagenet-c": "ImageNet-C"}   # in messages


@dataclass
class Released:
    kind: str                     # cifar10-c | cifar100-c | imagenet-c
    root: Path
    corruptions: list[str]        # the ones present, in robustkit's order where known
    classes: list[str] | None
    _labels: object = field(default=None, repr=False)
    crop: int | None = None

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.root}"

    def cell(self, corruption: str, severity: int) -> tuple[torch.Tensor, torch.Tensor]:
        if corruption not in self.corruptions:
            raise RobustkitError(f"{self.root} has no {corruption} (it has {', '.join(self.corruptions)})")
        if self.kind == "imagenet-c":
            from robustkit.sources.data import load_folder

            folder = self.root / corruption / str(severity)
            if not folder.is_dir():
                raise RobustkitError(f"{folder} is missing: ImageNet-C needs <corruption>/<1..5>/<class>/ folders")
            data = load_folder(folder, crop=self.crop, classes=self.classes)
            return data.images, data.labels
        import numpy as np

        arr = _load_npy(self.root / f"{corruption}.npy")
        n = len(arr) // 5
        block = np.array(arr[(severity - 1) * n: severity * n])   # read into memory (a writable copy of the map)
        labels = np.asarray(self._labels[(severity - 1) * n: severity * n])
        return torch.from_numpy(block).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels.astype(np.int64))


def open_released(spec: str, *, classes_file: str | None = None, crop: int | None = None) -> Released:
    """Check a released dataset's files (one clear error for what is missing or wrongly sized) and open it."""
    from robustkit.corruptions import CORRUPTIONS

    kind, _, raw = str(spec).partition(":")
    kind = kind.lower()
    root = Path(raw).expanduser().resolve()
    if not raw or not root.is_dir():
        raise RobustkitError(f"{kind}:{raw} is not a folder: give the folder of the released {_TITLES.get(kind, kind)} files")
    order = {c: i for i, c in enumerate(CORRUPTIONS)}
    if kind == "imagenet-c":
        present = sorted((d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                         key=lambda c: (order.get(c, 99), c))
        if not present:
            raise RobustkitError(f"{root} holds no <corruption>/ folders: ImageNet-C is <corruption>/<1..5>/<class>/*.JPEG")
        from robustkit.sources.data import read_classes_file

        classes = read_classes_file(classes_file) if classes_file else None
        return Released(kind, root, present, classes, crop=crop)
    import numpy as np

    labels_path = root / "labels.npy"
    if not labels_path.is_file():
        raise RobustkitError(f"{root} has no labels.npy: {_TITLES.get(kind, kind)} needs labels.npy beside the <corruption>.npy files")
    labels = _load_npy(labels_path)
    present = sorted((p.stem for p in root.glob("*.npy") if p.stem != "labels"), key=lambda c: (order.get(c, 99), c))
    if not present:
        raise RobustkitError(f"{root} has labels.npy but no <corruption>.npy files")
    for name in present:
        arr = _load_npy(root / f"{name}.npy")
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or len(arr) != len(labels) or len(arr) % 5:
            raise RobustkitError(
                f"{root / (name + '.npy')} has shape {tuple(arr.shape)} {arr.dtype}; expected ({len(labels)}, H, W, 3) "
                f"uint8, 5 severities of {len(labels) // 5} images in order, like labels.npy")
    classes = CIFAR10_CLASSES if kind == "cifar10-c" else None
    if classes_file:
        from robustkit.sources.data import read_classes_file

        classes = read_classes_file(classes_file)
    return Released(kind, root, present, classes, labels)


def _load_npy(path: Path):
    """``path`` as a read-only memory map; a file that is not a whole .npy array (truncated, pickled objects,
    another format) is one line."""
    import numpy as np

    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RobustkitError(f"{path} is not a readable .npy array ({first_line(exc)}); download the released file "
                             "again") from None
