"""robustkit.data: specs, digits, folder datasets + cache, torchvision offline errors, balanced
labeled subsets, batch order and the batched crop/flip augmentation."""

from __future__ import annotations

import os
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.io import encode_jpeg, encode_png

from robustkit import data as D
from robustkit.errors import RobustkitError
from robustkit.rng import generator

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------------------------------------- specs


def test_parse_spec_names_and_canonical(tmp_path, monkeypatch):
    assert D.parse_spec("cifar10") == D.DatasetSpec("cifar10")
    assert D.parse_spec(" STL10 ").canonical == "stl10"
    assert D.parse_spec("digits").canonical == "digits"
    monkeypatch.chdir(tmp_path)
    spec = D.parse_spec("folder:data/../imgs")
    assert spec == D.DatasetSpec("folder", str(tmp_path / "imgs"))
    assert spec.canonical == f"folder:{tmp_path / 'imgs'}"
    assert D.parse_spec(spec.canonical) == spec  # canonical round-trips
    assert D.parse_spec(spec) is spec


@pytest.mark.parametrize("bad", ["imagenet", "folder", "folder:", "digits:/x", ""])
def test_parse_spec_rejects_unknown(bad):
    with pytest.raises(RobustkitError, match="dataset|folder"):
        D.parse_spec(bad)


def test_default_flip():
    assert D.default_flip("digits") is False
    assert D.default_flip("cifar10") is True
    assert D.default_flip(D.DatasetSpec("folder", "/x")) is True


def test_unknown_split():
    with pytest.raises(RobustkitError, match="split"):
        D.load_dataset("digits", "val")


# --------------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_split(digits):
    train, test = digits
    assert train.images.shape == (1497, 3, 32, 32) and test.images.shape == (300, 3, 32, 32)
    for d in digits:
        assert d.images.dtype == torch.uint8 and d.images.is_contiguous() and d.images.device.type == "cpu"
        assert d.labels.dtype == torch.int64 and len(d.labels) == len(d.images)
        assert d.classes == [str(i) for i in range(10)] and d.num_classes == 10
        assert torch.equal(d.images[:, 0], d.images[:, 1]) and torch.equal(d.images[:, 0], d.images[:, 2])
    assert torch.bincount(test.labels).tolist() == [30] * 10
    # scikit-learn's per-class counts minus the 30 test images of each class
    full = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert torch.bincount(train.labels).tolist() == [n - 30 for n in full]
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0


def test_digits_content_is_stable():
    """Pinned numbers: the split and the upscaling must not drift between versions."""
    train, test = D.load_dataset("digits", "train"), D.load_dataset("digits", "test")
    assert train.labels[:12].tolist() == [1, 2, 3, 4, 5, 6, 7, 9, 0, 1, 2, 3]
    assert test.labels[:12].tolist() == [0, 8, 4, 7, 7, 8, 5, 5, 9, 3, 2, 2]
    assert int(train.images.sum()) == 356990673 and int(test.images.sum()) == 72682842
    weights = torch.arange(1, 301, dtype=torch.float64)
    assert (test.images[:, 0].double().sum((1, 2)) * weights).sum().item() == 3642225099.0


def test_digits_match_scikit_learn():
    """The fast CSV path reads exactly what load_digits returns; upscaling is bilinear of pixel/16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels, targets = D._raw_digits()
    assert torch.equal(pixels, torch.as_tensor(bunch.images, dtype=torch.float32))
    assert torch.equal(targets, torch.as_tensor(bunch.target, dtype=torch.int64))
    test = D.load_dataset("digits", "test")
    # find test image 0 in the full set by label + content
    small = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16
    big = (F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)
    matches = (big[:, 0] == test.images[0, 0]).flatten(1).all(1).nonzero().flatten()
    assert len(matches) >= 1 and int(bunch.target[matches[0]]) == int(test.labels[0])


# ------------------------------------------------------------------------------------- folder datasets


def test_folder_loads_cifar_slice(cifar_folder):
    train = D.load_dataset(f"folder:{cifar_folder}", "train")
    test = D.load_dataset(f"folder:{cifar_folder}", "test")
    assert train.images.shape == (300, 3, 32, 32) and test.images.shape == (100, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert train.classes == CIFAR_CLASSES and test.classes == CIFAR_CLASSES
    assert torch.bincount(train.labels).tolist() == [30] * 10
    assert torch.equal(train.labels, torch.arange(10).repeat_interleave(30))  # class order, then file name
    # pixel check against an independent decoder (libjpeg versions may differ by a level or two)
    import numpy as np
    from PIL import Image

    with Image.open(cifar_folder / "train" / "cat" / "0007.jpg") as im:
        ref = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    got = train.images[3 * 30 + 7]
    assert (got.float() - ref.float()).abs().mean() < 2.0
    mean, std = D.channel_stats(train.images)
    assert all(0.35 < m < 0.6 for m in mean) and all(0.15 < s < 0.35 for s in std)


def test_folder_cache_hit_does_not_decode(cifar_folder, monkeypatch):
    first = D.load_dataset(f"folder:{cifar_folder}", "train")
    cache_files = list((Path(os.environ["ROBUSTKIT_CACHE"]) / "folders").glob("*.pt"))
    assert len(cache_files) == 1

    def no_decoding(paths):
        raise AssertionError("decoded again although the cache was valid")

    monkeypatch.setattr(D, "_decode_all", no_decoding)
    second = D.load_dataset(f"folder:{cifar_folder}", "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes


def test_folder_cache_invalidated_when_a_file_changes(cifar_folder, tmp_path, monkeypatch):
    root = tmp_path / "cifar"
    shutil.copytree(cifar_folder, root)
    before = D.load_dataset(f"folder:{root}", "test")
    calls = []
    real = D._decode_all
    monkeypatch.setattr(D, "_decode_all", lambda paths: calls.append(len(paths)) or real(paths))

    target = root / "test" / "bird" / "0003.jpg"
    target.write_bytes((root / "test" / "ship" / "0005.jpg").read_bytes())
    after = D.load_dataset(f"folder:{root}", "test")
    assert calls == [100]
    assert torch.equal(after.images[23], before.images[85])  # bird/0003 now holds ship/0005's pixels
    assert not torch.equal(after.images[23], before.images[23])
    # the stale cache of this folder was dropped; loading again is a hit
    assert len(list((Path(os.environ["ROBUSTKIT_CACHE"]) / "folders").glob("*.pt"))) == 1
    D.load_dataset(f"folder:{root}", "test")
    assert calls == [100]

    # same bytes, new mtime: also a miss
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    D.load_dataset(f"folder:{root}", "test")
    assert calls == [100, 100]


def test_folder_corrupt_cache_is_rebuilt(cifar_folder):
    first = D.load_dataset(f"folder:{cifar_folder}", "test")
    (cache,) = (Path(os.environ["ROBUSTKIT_CACHE"]) / "folders").glob("*.pt")
    cache.write_bytes(b"not a torch file")
    again = D.load_dataset(f"folder:{cifar_folder}", "test")
    assert torch.equal(first.images, again.images)


def _write_image(path: Path, image: torch.Tensor, fmt: str = "png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_png(image) if fmt == "png" else encode_jpeg(image, quality=95)
    path.write_bytes(bytes(data.numpy()))


def _tiny_folder(root: Path, classes=("a", "b"), splits=("train", "test"), per_class: int = 2) -> Path:
    g = torch.Generator().manual_seed(0)
    for split in splits:
        for cls in classes:
            for i in range(per_class):
                _write_image(root / split / cls / f"{i}.png", torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g))
    return root


def test_folder_mixed_sizes_and_modes(tmp_path):
    """Grayscale and RGBA become RGB; odd sizes are resized to the most common size; junk files ignored."""
    root = _tiny_folder(tmp_path / "ds")
    gray = torch.full((1, 8, 8), 77, dtype=torch.uint8)
    _write_image(root / "train" / "a" / "gray.png", gray)
    from PIL import Image  # torchvision cannot encode RGBA PNGs

    Image.new("RGBA", (8, 8), (200, 200, 200, 255)).save(root / "train" / "b" / "rgba.png")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "train" / "b" / "old.bmp")  # PIL fallback
    _write_image(root / "train" / "b" / "big.png", torch.full((3, 16, 12), 50, dtype=torch.uint8))
    (root / "train" / "a" / "notes.txt").write_text("ignored")
    (root / "train" / "a" / ".hidden.png").write_bytes(b"ignored")
    ds = D.load_dataset(f"folder:{root}", "train")
    assert ds.images.shape == (8, 3, 8, 8)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    names_b = sorted(["0.png", "1.png", "big.png", "rgba.png", "old.bmp"])  # files in name order per class
    assert torch.all(ds.images[2] == 77)  # a/gray.png after a/0.png, a/1.png
    assert torch.all(ds.images[3 + names_b.index("big.png")] == 50)
    assert torch.all(ds.images[3 + names_b.index("rgba.png")] == 200)
    assert ds.images[3 + names_b.index("old.bmp"), :, 0, 0].tolist() == [10, 20, 30]


def test_folder_errors(tmp_path):
    with pytest.raises(RobustkitError, match="does not exist"):
        D.load_dataset(f"folder:{tmp_path / 'nope'}", "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RobustkitError, match="not a folder"):
        D.load_dataset(f"folder:{tmp_path / 'file'}", "train")

    only_train = _tiny_folder(tmp_path / "only_train", splits=("train",))
    assert len(D.load_dataset(f"folder:{only_train}", "train").images) == 4
    with pytest.raises(RobustkitError, match="no test/ folder"):
        D.load_dataset(f"folder:{only_train}", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustkitError, match="no train/ folder"):
        D.load_dataset(f"folder:{tmp_path / 'empty'}", "train")

    no_classes = tmp_path / "no_classes"
    (no_classes / "train").mkdir(parents=True)
    (no_classes / "test").mkdir()
    (no_classes / "train" / "loose.png").write_bytes(b"")
    with pytest.raises(RobustkitError, match="no class folders"):
        D.load_dataset(f"folder:{no_classes}", "train")

    no_images = _tiny_folder(tmp_path / "no_images")
    for split in ("train", "test"):
        (no_images / split / "c").mkdir()
        (no_images / split / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(RobustkitError, match=r"c has no images"):
        D.load_dataset(f"folder:{no_images}", "test")

    mismatch = _tiny_folder(tmp_path / "mismatch")
    (mismatch / "test" / "b").rename(mismatch / "test" / "z")
    for split in ("train", "test"):
        with pytest.raises(RobustkitError, match=r"different classes.*\['b'\].*\['z'\]|different classes.*\['z'\].*\['b'\]"):
            D.load_dataset(f"folder:{mismatch}", split)


def test_folder_corrupt_image_names_the_file(tmp_path):
    root = _tiny_folder(tmp_path / "ds")
    bad = root / "train" / "b" / "broken.jpg"
    good = (root / "train" / "a" / "0.png").read_bytes()
    bad.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64))  # a JPEG header followed by noise
    with pytest.raises(RobustkitError, match="broken.jpg") as info:
        D.load_dataset(f"folder:{root}", "train")
    assert "\n" not in str(info.value)
    bad.write_bytes(good[:20])  # a truncated PNG
    with pytest.raises(RobustkitError, match="broken.jpg"):
        D.load_dataset(f"folder:{root}", "train")


# --------------------------------------------------------------------------------------- torchvision


@pytest.fixture
def no_network(monkeypatch):
    """Every torchvision download path raises as if offline; nothing reaches the network."""
    import torchvision.datasets.cifar as cifar_mod
    import torchvision.datasets.stl10 as stl_mod
    import torchvision.datasets.utils as utils_mod

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    for mod in (cifar_mod, stl_mod, utils_mod):
        monkeypatch.setattr(mod, "download_and_extract_archive", offline)
    monkeypatch.setattr(utils_mod, "download_url", offline)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return calls


@pytest.mark.parametrize(("name", "archive"), [("cifar10", "cifar-10-python.tar.gz"), ("stl10", "stl10_binary.tar.gz")])
def test_torchvision_offline_error(no_network, tmp_path, name, archive):
    with pytest.raises(RobustkitError) as info:
        D.load_dataset(name, "train", data_dir=tmp_path / "tv")
    msg = str(info.value)
    assert str(tmp_path / "tv") in msg and archive in msg
    assert "--dataset digits" in msg and "--dataset folder:PATH" in msg and "\n" not in msg
    assert len(no_network) == 1  # download attempted once, and only after the local check failed


def test_torchvision_corrupt_archive_error(no_network, tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"half a download")
    with pytest.raises(RobustkitError, match="cifar-10-python.tar.gz fails torchvision's checksum.*--dataset digits"):
        D.load_dataset("cifar10", "test", data_dir=tmp_path)


def test_torchvision_default_data_dir(no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path / "envdata"))
    with pytest.raises(RobustkitError, match=str(tmp_path / "envdata")):
        D.load_dataset("cifar10", "test")


def test_cifar10_layout_from_torchvision(monkeypatch, tmp_path):
    """torchvision's NHWC numpy array becomes contiguous NCHW uint8; download only when missing."""
    import numpy as np
    import torchvision.datasets

    data = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    seen = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            seen.append((root, train, download))
            self.data, self.targets, self.classes = data, [3, 1, 0, 9], CIFAR_CLASSES

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = D.load_dataset("cifar10", "test", data_dir=tmp_path)
    assert seen == [(str(tmp_path), False, False)]
    assert ds.images.shape == (4, 3, 32, 32) and ds.images.is_contiguous()
    assert ds.images[2, 1, 5, 7].item() == int(data[2, 5, 7, 1])
    assert ds.labels.tolist() == [3, 1, 0, 9] and ds.labels.dtype == torch.int64
    assert ds.classes == CIFAR_CLASSES


# ------------------------------------------------------------------------------------- channel stats


def test_channel_stats_matches_direct_computation(digits):
    train, _ = digits
    images = train.images[:400].clone()
    images[:, 1] //= 2  # make channels differ
    x = images.double() / 255
    mean, std = D.channel_stats(images, chunk=100)
    assert mean == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    small, big = D.channel_stats(images, chunk=7), D.channel_stats(images, chunk=10**6)
    assert small[0] == pytest.approx(big[0]) and small[1] == pytest.approx(big[1])


# ------------------------------------------------------------------------------------- balanced split


def test_balanced_split_is_balanced_and_partitions(digits):
    labels = digits[0].labels
    labeled, unlabeled = D.balanced_split(labels, 250, 10, seed=0)
    assert labeled.dtype == torch.int64 and unlabeled.dtype == torch.int64
    assert torch.bincount(labels[labeled], minlength=10).tolist() == [25] * 10
    assert torch.equal(labeled, labeled.sort().values)
    assert torch.equal(torch.cat([labeled, unlabeled]).sort().values, torch.arange(len(labels)))
    assert len(unlabeled) == len(labels) - 250


def test_balanced_split_determinism_seeds_and_nesting(digits):
    labels = digits[0].labels
    a, _ = D.balanced_split(labels, 100, 10, seed=1)
    b, _ = D.balanced_split(labels.clone(), 100, 10, seed=1)
    c, _ = D.balanced_split(labels, 100, 10, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and len(set(a.tolist()) & set(c.tolist())) < 50
    bigger, _ = D.balanced_split(labels, 500, 10, seed=1)
    assert set(a.tolist()) <= set(bigger.tolist())  # smaller label sets nest inside larger ones
    # the documented recipe, for class 4
    members = torch.nonzero(labels == 4).flatten()
    order = torch.randperm(len(members), generator=generator("cpu", 1, "labeled", 4))
    assert set(members[order[:10]].tolist()) == set(a[labels[a] == 4].tolist())


def test_balanced_split_all_labels():
    labels = torch.tensor([0, 1, 1, 0, 2])
    labeled, unlabeled = D.balanced_split(labels, None, 3, seed=0)
    assert labeled.tolist() == [0, 1, 2, 3, 4] and unlabeled.numel() == 0 and unlabeled.dtype == torch.int64
    labeled, unlabeled = D.balanced_split(torch.tensor([0, 1, 1, 0]), 4, 2, seed=0)  # every image, exactly
    assert labeled.tolist() == [0, 1, 2, 3] and unlabeled.numel() == 0


def test_balanced_split_errors(digits):
    labels = digits[0].labels
    with pytest.raises(RobustkitError, match="multiple.*use 250 or 260"):
        D.balanced_split(labels, 255, 10, seed=0)
    with pytest.raises(RobustkitError, match="fewer than the 10 classes"):
        D.balanced_split(labels, 5, 10, seed=0)
    with pytest.raises(RobustkitError, match="more than the 1497 images.*at most 1440"):   # its smallest class: 144
        D.balanced_split(labels, 2000, 10, seed=0)
    skewed = torch.cat([torch.zeros(3, dtype=torch.int64), torch.ones(40, dtype=torch.int64)])
    with pytest.raises(RobustkitError, match="class 0 has only 3.*at most 6"):
        D.balanced_split(skewed, 20, 2, seed=0)
    with pytest.raises(RobustkitError, match="per class|multiple"):
        D.balanced_split(labels, 15, 10, seed=0)


@pytest.mark.parametrize("n_labels", [5, 255, 1435, 1439, 1441, 1445, 1490, 1495, 1500, 2000])
def test_every_number_a_labels_error_suggests_is_accepted(digits, n_labels):
    """Before: --labels 1495 suggested 1500, which was refused with 'use at most 1490', which was refused too."""
    import re

    labels = digits[0].labels
    try:
        D.balanced_split(labels, n_labels, 10, seed=0)
        return
    except RobustkitError as exc:
        message = str(exc)
    suggested = [int(v) for v in re.findall(r"(?:use|at most|at least|or) (\d+)", message)]
    assert suggested, message
    for value in suggested:
        labeled, _ = D.balanced_split(labels, value, 10, seed=0)
        assert len(labeled) == value, message


# ------------------------------------------------------------------------------------- batch indices


def test_batch_indices_epochs_cover_every_index_once():
    n, b = 37, 10
    stream = torch.cat([D.batch_indices(n, b, seed=3, step=s) for s in range(12)])  # 120 >= 3 epochs
    for e in range(3):
        assert torch.equal(stream[e * n : (e + 1) * n].sort().values, torch.arange(n))
    first = torch.randperm(n, generator=generator("cpu", 3, "epoch", 0))
    assert torch.equal(stream[:n], first)  # the documented stream


def test_batch_indices_is_a_pure_function():
    seq = [D.batch_indices(50, 16, seed=0, step=s) for s in range(10)]
    expected = seq[7].clone()
    seq[7][:] = -1  # callers may scribble on results without corrupting the cached permutations
    assert torch.equal(D.batch_indices(50, 16, seed=0, step=7), expected)
    D._epoch_perm.cache_clear()  # cold cache, out of order: same answers (this is what makes resume exact)
    for s in (8, 3, 0):
        assert torch.equal(D.batch_indices(50, 16, seed=0, step=s), seq[s])
    assert not torch.equal(D.batch_indices(50, 16, seed=1, step=0), seq[0])
    assert D.batch_indices(50, 16, 0, 0).dtype == torch.int64


def test_batch_indices_batch_larger_than_pool():
    n, b = 5, 12
    stream = torch.cat([torch.randperm(n, generator=generator("cpu", 9, "epoch", e)) for e in range(6)])
    assert torch.equal(D.batch_indices(n, b, seed=9, step=0), stream[:12])
    assert torch.equal(D.batch_indices(n, b, seed=9, step=1), stream[12:24])
    assert torch.bincount(D.batch_indices(n, b, 9, 1), minlength=n).min() >= 2
    with pytest.raises(ValueError):
        D.batch_indices(0, 4, 0, 0)


# ------------------------------------------------------------------------------------------ augment


def _candidates(images: torch.Tensor, pad: int):
    """All (dy, dx, flipped) crops of the reflect-padded images, computed the obvious way (F.pad)."""
    h, w = images.shape[-2:]
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, :, dy : dy + h, dx : dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop.flip(-1)


def _identify(images: torch.Tensor, out: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """For every output image, the unique candidate crop it equals exactly (fails if none/several)."""
    as_uint8 = (out * 255).round().to(torch.uint8)
    assert torch.equal(as_uint8.float() / 255, out)  # exactly k/255 values, nothing interpolated
    keys, crops = zip(*_candidates(images, pad))
    hits = (torch.stack(crops) == as_uint8).flatten(2).all(2)  # (candidates, images)
    assert torch.all(hits.sum(0) == 1), "every output must be exactly one reflect-pad crop"
    return [keys[k] for k in hits.int().argmax(0).tolist()]


def test_augment_is_exact_reflect_crop_and_covers_offsets():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (600, 3, 8, 10), dtype=torch.uint8, generator=g)  # H != W on purpose
    out = D.augment(images, torch.Generator().manual_seed(1), pad=4)
    assert out.dtype == torch.float32 and out.shape == images.shape and out.is_contiguous()
    assert 0.0 <= out.min() and out.max() <= 1.0
    keys = _identify(images, out, pad=4)
    assert {(dy, dx) for dy, dx, _ in keys} == {(dy, dx) for dy in range(9) for dx in range(9)}
    flipped = sum(f for *_, f in keys)
    assert 240 < flipped < 360


def test_augment_cifar_shape_and_flip_off():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with_flip = _identify(images, D.augment(images, torch.Generator().manual_seed(5)), pad=4)
    without = _identify(images, D.augment(images, torch.Generator().manual_seed(5), flip=False), pad=4)
    assert any(f for *_, f in with_flip) and not any(f for *_, f in without)
    # the same draws: offsets do not depend on the flip switch
    assert [k[:2] for k in with_flip] == [k[:2] for k in without]


def test_augment_determinism_and_pad_zero():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    a = D.augment(images, torch.Generator().manual_seed(7))
    b = D.augment(images, torch.Generator().manual_seed(7))
    c = D.augment(images, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)
    first, second = D.augment(images, g), D.augment(images, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances
    plain = D.augment(images, torch.Generator().manual_seed(0), pad=0, flip=False)
    assert torch.equal(plain, images.float() / 255)
    with pytest.raises(ValueError):
        D.augment(images, torch.Generator(), pad=32)


# ------------------------------------------------------------------------------------------------ rng


def test_derive_seed_gives_one_stream_per_key_sequence_stable_across_processes():
    """derive_seed (robustkit/rng.py): keys are a sequence, not one concatenated string, so (1, 23) and (12, 3)
    are different streams; a 63-bit seed; the same in another interpreter with another string-hash seed
    (stable across runs: a resumed run redraws what the interrupted one drew)."""
    import subprocess
    import sys

    from robustkit.rng import derive_seed

    keys = [(1, 23), (12, 3), (123,), ("pgd", 1, 23), ("pgd", 12, 3), ("pgd1", 23)]
    seeds = [derive_seed(*k) for k in keys]
    assert len(set(seeds)) == len(keys)
    assert all(0 <= s < 2**63 for s in seeds)
    code = "from robustkit.rng import derive_seed; print(derive_seed('train', 3, 17))"
    repo = str(Path(__file__).resolve().parents[1])
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": h, "PYTHONPATH": repo}).stdout.strip() for h in ("1", "2")}
    assert outs == {str(derive_seed("train", 3, 17))}
