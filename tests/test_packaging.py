"""What `pip install robustkit` asks of the user's environment: no pins that damage it."""

from __future__ import annotations

import importlib.metadata as md
import re

from packaging.requirements import Requirement


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in md.requires("robustkit") or []]


def _core() -> dict[str, Requirement]:
    return {r.name.lower(): r for r in _requirements() if not (r.marker and "extra" in str(r.marker))}


def _extra(name: str) -> dict[str, Requirement]:
    pattern = re.compile(rf"extra\s*==\s*['\"]{name}['\"]")
    return {r.name.lower(): r for r in _requirements() if r.marker and pattern.search(str(r.marker))}


def test_core_requirements_pin_neither_requests_nor_setuptools():
    core = _core()
    assert {"torch", "torchvision", "numpy", "typer"} <= set(core)
    assert "requests" not in core and "setuptools" not in core
    assert "torchattacks" not in core  # it pins requests~=2.25.1: an opt-in extra only
    assert "timm" not in core


def test_torchattacks_and_timm_are_extras_and_the_dev_tools_carry_the_pins():
    assert "torchattacks" in _extra("torchattacks")
    assert "timm" in _extra("timm")
    dev = _extra("dev")
    assert "torchattacks" in dev and "setuptools" in dev and "pytest" in dev


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
