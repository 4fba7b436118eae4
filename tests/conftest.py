"""Shared test fixtures: isolated cache/data folders, a small real CIFAR-10 ImageFolder, the digits data.

* every test gets its own ``$ROBUSTKIT_CACHE`` and ``$ROBUSTKIT_DATA`` (autouse), so no test reads or
  writes ``~/.cache`` and no test sees another test's cache;
* ``cifar_folder``: a real slice of ``shared/data/cifar10-jpeg75.tar.gz`` (30 train + 10 test JPEGs per
  class, files 0000-0029 / 0000-0009) as an ImageFolder, extracted once per session; skips the test
  with a clear reason when the archive is not on this machine. Read-only by convention: copy it
  (``shutil.copytree``) before changing files;
* ``digits``: ``(train, test)`` :class:`robustkit.data.Dataset` s of the bundled digits, fresh copies per test.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = "cifar10-jpeg75.tar.gz"
CIFAR_SLICE = {"train": 30, "test": 10}  # images per class in the cifar_folder fixture


def find_cifar_archive() -> Path | None:
    """The shared archive: ``$ROBUSTKIT_SHARED/data``, ``<repo>/../shared/data`` or ``<repo>/shared/data``."""
    candidates = []
    if os.environ.get("ROBUSTKIT_SHARED"):
        shared = Path(os.environ["ROBUSTKIT_SHARED"])
        candidates += [shared / "data" / CIFAR_ARCHIVE, shared / CIFAR_ARCHIVE]
    candidates += [REPO.parent / "shared" / "data" / CIFAR_ARCHIVE, REPO / "shared" / "data" / CIFAR_ARCHIVE]
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture(autouse=True)
def _isolated_robustkit_dirs(tmp_path_factory, monkeypatch):
    """Point the dataset cache and the torchvision data folder at fresh temp folders."""
    base = tmp_path_factory.mktemp("robustkit_home")
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(base / "cache"))
    monkeypatch.setenv("ROBUSTKIT_DATA", str(base / "data"))


def _extract_slice(archive: Path, dest: Path) -> None:
    """Stream the archive once and write the chosen members ourselves (no tar.extract: no path tricks)."""
    with tarfile.open(archive, "r|gz") as tf:
        for member in tf:
            parts = member.name.strip("/").split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in CIFAR_SLICE:
                continue
            split, cls, name = parts
            stem = Path(name).stem
            if not stem.isdigit() or int(stem) >= CIFAR_SLICE[split]:
                continue
            target = dest / split / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tf.extractfile(member).read())


@pytest.fixture(scope="session")
def cifar_folder(request, tmp_path_factory) -> Path:
    """A small real CIFAR-10 ImageFolder (train: 30/class, test: 10/class; 10 classes) - do not modify.

    Streaming the 20 MB archive takes 3-5 s, so the slice is kept in pytest's cache folder
    (``.pytest_cache``, in a folder named by the archive's path, size and mtime) and copied into a fresh temp
    folder per session; with ``-p no:cacheprovider`` it is extracted every session.
    """
    archive = find_cifar_archive()
    if archive is None:
        pytest.skip(
            f"{CIFAR_ARCHIVE} not found (looked in $ROBUSTKIT_SHARED/data, <repo>/../shared/data, "
            "<repo>/shared/data); set ROBUSTKIT_SHARED to the folder holding data/"
        )
    root = tmp_path_factory.mktemp("cifar_slice") / "cifar10-slice"
    cache = getattr(request.config, "cache", None)
    if cache is None:
        _extract_slice(archive, root)
        return root
    kept = Path(cache.mkdir("robustkit-cifar-slice"))
    st = archive.stat()
    stamp = f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}|{sorted(CIFAR_SLICE.items())}"
    ready = kept / hashlib.blake2b(stamp.encode(), digest_size=8).hexdigest()
    if not ready.is_dir():
        # Extract privately, then rename into place: concurrent test sessions never see half a slice.
        scratch = kept / f"{ready.name}.tmp-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        _extract_slice(archive, scratch)
        try:
            os.rename(scratch, ready)
        except OSError:  # another session got there first
            shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(ready, root)
    return root


@pytest.fixture(scope="session")
def _digits_session():
    from robustkit.data import load_dataset

    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture
def digits(_digits_session):
    """``(train, test)`` digits Datasets (1,497 / 300 images, 3x32x32 uint8); copies, free to modify."""
    from robustkit.data import Dataset

    return tuple(Dataset(d.images.clone(), d.labels.clone(), list(d.classes)) for d in _digits_session)


@pytest.fixture(scope="session")
def evaluated_runs(tmp_path_factory) -> Path:
    """A folder with two small real runs on digits (baseline, gradaug; wrn-10-1, 30 steps), each with
    eval/fgsm.json (eps 0, 0.05, 0.1) and eval/corruptions.json (3 corruptions x 2 severities, 100 images).

    Read-only by convention: copy it (``shutil.copytree``) before changing files.
    """
    from robustkit.config import TrainConfig
    from robustkit.jobs import run_corruptions, run_fgsm
    from robustkit.train import fit

    root = tmp_path_factory.mktemp("evaluated") / "runs"
    for method in ("baseline", "gradaug"):
        cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=250, method=method, steps=30,
                          batch_size=32, lr=0.05, eval_every=30, device="cpu")
        fit(cfg, root / method, progress=False)
    run_fgsm([root], [0.0, 0.05, 0.1], limit=100, device="cpu")
    run_corruptions([root], ["gaussian_noise", "fog", "contrast"], [1, 3], limit=100, device="cpu")
    return root


@pytest.fixture
def spy_results(monkeypatch):
    """``spy_results(module, name, pick)`` replaces ``module.name`` (for this test) with a wrapper that calls it and
    appends ``pick(result)`` of every call to the list it returns: what a job passed through a function."""
    def spy(module, name: str, pick) -> list:
        seen, real = [], getattr(module, name)

        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            seen.append(pick(out))
            return out
        monkeypatch.setattr(module, name, wrapper)
        return seen
    return spy


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of small tensors (robustkit.scripting.torch_threads): on a
    shared 2-core machine OpenMP spinning made them ~10x slower. Results do not depend on it: tests compare
    two computations that run alike."""
    from robustkit.scripting import torch_threads

    with torch_threads(1):
        yield


@functools.cache
def inductor_compiles_here() -> str | None:
    """None when TorchInductor can compile on this machine's CPU (it needs a C++ compiler), else why not (tests
    of compiled code skip, saying so; their fallbacks without a compiler are tested with a broken compile)."""
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(4))
    except Exception as exc:  # noqa: BLE001  (whatever inductor raises without a toolchain)
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}"
    return None


def load_script(path: Path):
    """A script of the repository (bench/, train/, eval/: scripts, not part of the package) as a module, named
    after its file. Registered in sys.modules while it loads, as an import would (its dataclasses look their
    module up there); each script puts what it needs on sys.path itself, as when run."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module
