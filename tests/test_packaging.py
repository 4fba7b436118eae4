"""What `pip install robustkit` asks of the user's environment (no pins that damage it, no imagecorruptions, no
GUI opencv) and what the wheel carries (frost photographs, configs, licences)."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from robustkit.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
FROST_DIR = REPO / "robustkit" / "corruptions" / "frost"
# SHA-256 of the frost photographs in the imagecorruptions 1.1.2 wheel (identical to hendrycks/robustness,
# ImageNet-C/create_c/); robustkit ships these bytes unchanged, so frost crops exactly what the references crop.
FROST_SHA256 = {
    "frost1.png": "ff9f907860bd7a835d459e32f9d588062b7f61ee267343cc7222b56753a14755",
    "frost2.png": "fe211a89b336999c207a852ce05818d4545d0b57c5beadd824b4cc9d9a9b6137",
    "frost3.png": "2d0d50b4a9bb213f38b024ef7768731bb83cc08d2f26b5766bbc167cdfa0e504",
    "frost4.jpg": "3f8b91ca1a9fa7167b09e773da53f5ae60d0a1fd88f02a783f6e328a72887f6e",
    "frost5.jpg": "5fc6a19df4a429ba68abdcc8f8a4278d4c9f81c9ccafd2c92ab0c8cf8992ebd2",
}
NOT_IN_CORE = ("imagecorruptions", "setuptools", "requests", "torchattacks", "timm", "scikit-image")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in md.requires("robustkit") or []]


def _core() -> dict[str, Requirement]:
    return {r.name.lower(): r for r in _requirements() if not (r.marker and "extra" in str(r.marker))}


def _extra(name: str) -> dict[str, Requirement]:
    pattern = re.compile(rf"extra\s*==\s*['\"]{name}['\"]")
    return {r.name.lower(): r for r in _requirements() if r.marker and pattern.search(str(r.marker))}


def _check_core(core) -> None:
    core = {canonicalize_name(n) for n in core}
    assert {"torch", "torchvision", "numpy", "typer", "pyyaml"} <= core
    # torchattacks pins requests~=2.25.1, imagecorruptions drags in GUI opencv, scikit-image, scipy and needs
    # setuptools<81 to import: none of them in a plain install.
    assert not core & set(NOT_IN_CORE), core
    assert not [n for n in core if "opencv" in n], core


def test_core_requirements_pin_nothing_that_damages_the_environment():
    _check_core(_core())


def test_torchattacks_and_timm_are_extras_and_the_dev_tools_carry_the_pins():
    assert "torchattacks" in _extra("torchattacks")
    assert "timm" in _extra("timm")
    dev = _extra("dev")
    assert {"torchattacks", "imagecorruptions", "setuptools", "pytest"} <= set(dev)  # the tests' references


def test_no_core_dependency_pulls_opencv_or_imagecorruptions():
    """The installed dependency closure of the core requirements (markers evaluated here, no extras)."""
    seen: set[str] = set()
    todo = [r for r in _core().values() if not r.marker or r.marker.evaluate({"extra": ""})]
    while todo:
        name = canonicalize_name(todo.pop().name)
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = [Requirement(r) for r in md.requires(name) or []]
        except md.PackageNotFoundError:
            continue
        todo += [r for r in reqs if not r.marker or r.marker.evaluate({"extra": ""})]
    assert "torch" in seen and "matplotlib" in seen
    assert not [n for n in seen if "opencv" in n or n in ("imagecorruptions", "scikit-image")], sorted(seen)


def test_the_product_never_imports_imagecorruptions_or_torchattacks_on_the_default_path():
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from robustkit.corruptions import corrupt, CORRUPTIONS\n"
            "from robustkit.attacks import fgsm_sweep, pgd_sweep\n"
            "from robustkit.models import create_model\n"
            "m = create_model('wrn-10-1', num_classes=10).eval()\n"
            "x = torch.rand(2, 3, 32, 32)\n"
            "for c in CORRUPTIONS: corrupt(x, c, 3, 'cifar-10-c')\n"
            "pgd_sweep(m, x, torch.tensor([0, 1]), [0.1], steps=1)\n"
            "bad = [k for k in ('imagecorruptions', 'torchattacks', 'pkg_resources') if k in sys.modules]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ frost photographs

def test_shipped_frost_photographs_are_the_references_bytes():
    assert sorted(p.name for p in FROST_DIR.iterdir() if p.suffix in (".png", ".jpg")) == sorted(FROST_SHA256)
    for name, digest in FROST_SHA256.items():
        assert _sha256((FROST_DIR / name).read_bytes()) == digest, name
    # the same bytes as the installed imagecorruptions (the dev extra), located without importing it
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None:
        pytest.skip("imagecorruptions is not installed (pip install -e '.[dev]')")
    theirs = Path(next(iter(spec.submodule_search_locations))) / "frost"
    for name in FROST_SHA256:
        assert (FROST_DIR / name).read_bytes() == (theirs / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------- the wheel

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """robustkit's wheel, built from a copy of the sources (so no build/ or egg-info lands in the checkout)
    with the setuptools of this environment (no network)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "robustkit", src / "robustkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (whl,) = (tmp / "dist").glob("robustkit-*.whl")
    return whl


def test_wheel_metadata_licence_and_requirements(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    assert meta["License-Expression"] == "MIT AND Apache-2.0"  # robustkit + the frost photographs
    assert {"LICENSE", "NOTICE"} <= set(meta.get_all("License-File"))
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    _check_core([r.name for r in reqs if not r.marker])
    dev = {canonicalize_name(r.name) for r in reqs if r.marker and 'extra == "dev"' in str(r.marker)}
    assert {"imagecorruptions", "pytest"} <= dev


def test_wheel_ships_frost_photographs_configs_and_licences(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name, digest in FROST_SHA256.items():
            assert _sha256(z.read(f"robustkit/corruptions/frost/{name}")) == digest, name
        configs = {n.rsplit("/", 1)[1] for n in names if n.startswith("robustkit/configs/")}
        licences = {n.split("/licenses/", 1)[1] for n in names if ".dist-info/licenses/" in n}
    assert configs == {p.name for p in CONFIG_DIR.glob("*.yaml")} and len(configs) == 27
    assert "robustkit/corruptions/frost/LICENSE-Apache-2.0.txt" in names
    assert {"LICENSE", "NOTICE"} <= licences
    assert not [n for n in names if "frost6" in n or "__pycache__" in n]


def test_installed_wheel_reads_frost_and_configs_from_itself_without_imagecorruptions(wheel, tmp_path):
    """The unpacked wheel alone (imagecorruptions made unimportable, another directory): frost works and
    equals this checkout's frost, a config name resolves inside the package, --list-configs lists them."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import importlib.abc, json, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('imagecorruptions', 'cv2', 'skimage'):\n"
        "            raise ModuleNotFoundError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, robustkit\n"
        "from robustkit.corruptions import corrupt\n"
        "from robustkit.config import find_config, load_config_file\n"
        "from robustkit.cli import app\n"
        "x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))\n"
        "torch.save([corrupt(x, 'frost', s, 'cifar-10-c', seed=1) for s in (1, 5)], 'frost.pt')\n"
        "print(json.dumps({'robustkit': robustkit.__file__, 'config': str(find_config('cifar10_250_gradaug_semi')),\n"
        "                  'labels': load_config_file('cifar10_250_gradaug_semi.yaml')['labels']}))\n"
        "app(['train', '--list-configs'], standalone_mode=False)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    first, *listing = out.stdout.strip().splitlines()
    info = json.loads(first)
    assert Path(info["robustkit"]).is_relative_to(site), info  # the wheel's copy, not the checkout
    assert Path(info["config"]).is_relative_to(site / "robustkit" / "configs") and info["labels"] == 250
    assert sum(line.startswith(("cifar10_", "stl10_")) for line in listing) == 27

    from robustkit.corruptions import corrupt

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    theirs = torch.load(elsewhere / "frost.pt")
    for s, t in zip((1, 5), theirs):
        assert torch.equal(t, corrupt(x, "frost", s, "cifar-10-c", seed=1))
        assert (t - x).abs().mean() > 0.01  # frost did something
