"""A model file never runs code unless the user says so (issue 18).

``.pt2`` and TorchScript files can run code while they load, so like ``python:`` sources they need
``--trust-code`` (``trust_code=True``). Each test builds a working classifier file and a malicious variant
whose loading writes a marker file:

* ``.pt2``: a legit ``torch.export`` archive with one weight entry rewritten to ``use_pickle: true`` and
  its bytes replaced by a pickle whose ``__reduce__`` writes the marker (and returns a valid bias, so the
  program still works). ``torch.export.load`` unpickles it with ``torch.load(weights_only=False)``.
* TorchScript: a scripted module whose ``__setstate__`` (TorchScript, run by ``torch.jit.load``) creates the
  marker through ``torch.from_file(..., shared=True)``. (A Python ``__reduce__`` in ``data.pkl`` is refused
  by TorchScript's own unpickler, so TorchScript code is the way such a file runs code.)

Without trust: one line naming the reason and ``--trust-code``, the loader never called, no marker, nothing
written. With trust: the file loads, and for the malicious one the marker IS written (trusting runs it).
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from torch import nn

from robustkit.errors import RobustkitError
from robustkit.sources.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLI = ["--data", "digits", "--num-classes", "10", "--limit", "20", "--no-progress", "--device", "cpu"]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), nn.ReLU(), nn.Linear(8, 10)).eval()


class _WritesMarker:
    """Unpickling this writes ``marker`` and yields a valid bias of the first layer (8 zeros)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({self.marker!r}).write_text('ran') and "
                       "__import__('torch').nn.Parameter(__import__('torch').zeros(8))",))


@functools.cache
def _exported() -> bytes:
    """The saved torch.export program of :func:`_net` (dynamic batch), exported once (slow)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(_net(), (torch.rand(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def make_pt2(path: Path, marker: Path | None = None) -> Path:
    """A torch.export program of :func:`_net`; with ``marker``, its ``1.bias`` entry is a pickle that writes
    ``marker`` when loaded."""
    path.write_bytes(_exported())
    if marker is None:
        return path
    buf = io.BytesIO()
    torch.save(_WritesMarker(marker), buf)
    legit = zipfile.ZipFile(io.BytesIO(_exported()))
    config_name = next(n for n in legit.namelist() if n.endswith("weights_config.json"))
    config = json.loads(legit.read(config_name))
    entry = config["config"]["1.bias"]
    entry["use_pickle"] = True
    payload = f"{config_name.rsplit('/', 1)[0]}/{entry['path_name']}"
    with zipfile.ZipFile(path, "w") as out:
        for info in legit.infolist():
            data = legit.read(info.filename)
            out.writestr(info, json.dumps(config).encode() if info.filename == config_name
                         else buf.getvalue() if info.filename == payload else data)
    return path


class _Probe(nn.Module):
    """Identity; its TorchScript ``__setstate__`` (run by torch.jit.load) creates the file ``marker``."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool, int]:
        return (self.marker, self.training, self.seen)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool, int]) -> None:
        self.marker, self.training = state[0], state[1]
        self.seen = int(torch.from_file(self.marker, shared=True, size=3, dtype=torch.uint8).fill_(65).sum())


def make_ts(path: Path, marker: Path | None = None) -> Path:
    """A TorchScript file of :func:`_net`; with ``marker``, a first module whose loading writes ``marker``."""
    net = _net() if marker is None else nn.Sequential(_Probe(str(marker)), *_net())
    torch.jit.save(torch.jit.script(net), str(path))
    return path


KINDS = {"pt2": (make_pt2, "torch.export.load", "torch.export program"),
         "ts": (make_ts, "torch.jit.load", "TorchScript file")}


@pytest.fixture
def loader_calls(monkeypatch):
    """Records every call of torch.export.load / torch.jit.load (and still loads)."""
    calls = []
    for mod, name in ((torch.export, "load"), (torch.jit, "load")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_without_trust_code_a_model_file_is_refused_and_never_loaded(kind, tmp_path, loader_calls):
    make, _, what = KINDS[kind]
    marker = tmp_path / "marker"
    evil = make(tmp_path / f"evil.{kind}", marker)
    legit = make(tmp_path / f"legit.{kind}")
    assert not marker.exists()                           # building the file ran nothing
    for command in ("fgsm", "corrupt"):
        for f in (evil, legit):
            extra = ["--eps", "0.01"] if command == "fgsm" else ["--corruptions", "fog", "--severities", "1"]
            res = invoke(command, f, *CLI, *extra, "--out", tmp_path / "out")
            assert_one_line_error(res, str(f), what, "can run", "add --trust-code")
    with pytest.raises(RobustkitError, match="trust_code=True") as err:
        load_model(str(evil), device="cpu")
    assert len(str(err.value).splitlines()) == 1
    assert loader_calls == [] and not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_with_trust_code_a_legit_file_loads_and_a_malicious_one_runs(kind, tmp_path):
    make, _, _ = KINDS[kind]
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        ref = _net()(x)
    legit = make(tmp_path / f"legit.{kind}")
    model, info = load_model(str(legit), device="cpu", mean=[0.0], std=[1.0], trust_code=True)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)
    assert info.kind == ("export" if kind == "pt2" else "torchscript")
    res = invoke("fgsm", legit, *CLI, "--eps", "0.01", "--out", tmp_path / "legit-out", "--trust-code")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "legit-out" / "fgsm.json").read_text())["n"] == 20

    marker = tmp_path / "marker"
    evil = make(tmp_path / f"evil.{kind}", marker)
    res = invoke("fgsm", evil, *CLI, "--eps", "0.01", "--out", tmp_path / "evil-out", "--trust-code")
    assert res.exit_code == 0, res.output
    assert marker.exists()                               # documented: trusting a file runs its code

    # results name the model file by its sha256, so another file at the same path is evaluated afresh, not served
    # the cells of the one before
    import hashlib

    def recorded_sha() -> str:
        return json.loads((tmp_path / "legit-out" / "fgsm.json").read_text())["sha256"]
    assert recorded_sha() == hashlib.sha256(legit.read_bytes()).hexdigest()
    legit.write_bytes(evil.read_bytes())
    res = invoke("fgsm", legit, *CLI, "--eps", "0.01", "--out", tmp_path / "legit-out", "--trust-code")
    assert res.exit_code == 0 and "settings changed (sha256)" in " ".join(res.output.split()), res.output
    assert recorded_sha() == hashlib.sha256(evil.read_bytes()).hexdigest()


@pytest.mark.parametrize("trust", [False, True])
def test_checkpoints_and_weights_never_run_code_even_with_trust_code(tmp_path, trust):
    """A pickle payload as a checkpoint or as --weights, and a malicious TorchScript file named .pt (read
    as a checkpoint), are refused by weights_only=True whatever --trust-code says."""
    marker = tmp_path / "marker"
    torch.save(_WritesMarker(marker), tmp_path / "evil.pt")
    make_ts(tmp_path / "evil-ts.pt", marker)
    flag = ["--trust-code"] if trust else []
    res = invoke("fgsm", tmp_path / "evil.pt", "--no-progress", "--device", "cpu", *flag)
    assert_one_line_error(res, "would run code", "weights_only=True")
    res = invoke("fgsm", tmp_path / "evil-ts.pt", "--no-progress", "--device", "cpu", *flag)
    assert_one_line_error(res, "TorchScript file", "name it .ts", "--trust-code")
    for f in ("evil.pt", "evil-ts.pt"):
        res = invoke("fgsm", "torchvision:resnet18", "--weights", tmp_path / f, *CLI, *flag)
        assert_one_line_error(res, "weights_only=True")
    assert not marker.exists()


def test_a_trusted_file_that_is_not_an_export_archive_is_one_line(tmp_path):
    """torch.export.load logs the traceback of an unreadable file before raising: a user saw 13 lines of it above
    robustkit's one line. Run as a process, since the log goes to the stderr torch's handler captured at import."""
    import os
    import subprocess
    import sys

    (tmp_path / "bad.pt2").write_text("not a zip\n")
    res = subprocess.run([sys.executable, "-m", "robustkit", "fgsm", "bad.pt2", "--trust-code", "--data", "digits",
                          "--limit", "10", "--device", "cpu", "--no-progress"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == ["error: bad.pt2 is not a readable torch.export program: File is not "
                                               "a zip file"], res.stderr


def test_a_trusted_torchscript_file_says_nothing_of_torchs_deprecation(tmp_path):
    """torch >= 2.10 warns on every torch.jit.load that TorchScript is deprecated: a bad .ts file's error was three
    lines (the warning's two, then robustkit's), and every good run printed the warning too."""
    import os
    import subprocess
    import sys

    (tmp_path / "bad.ts").write_text("not a zip\n")
    make_ts(tmp_path / "good.ts")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--trust-code", "--data", "digits", "--limit", "10", "--device", "cpu", "--no-progress", "--mean", "0",
              "--std", "1"]
    bad = subprocess.run([sys.executable, "-m", "robustkit", "fgsm", "bad.ts", *common], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.ts is not a readable TorchScript file: "), bad.stderr
    good = subprocess.run([sys.executable, "-m", "robustkit", "fgsm", "good.ts", *common, "--eps", "0.01", "--out",
                           "out"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert good.returncode == 0, good.stderr
    assert "deprecated" not in good.stderr + good.stdout and "Warning" not in good.stderr, good.stderr


def test_without_trust_code_a_python_source_is_not_even_imported(tmp_path, monkeypatch):
    """python:MODULE:FUNCTION is refused before MODULE is imported: importing it runs its top-level code, which
    writes a marker here. With trust the same source imports (and so runs) it."""
    import sys

    marker = tmp_path / "marker"
    (tmp_path / "evil_models.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "def make():\n    import torch\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_models", raising=False)
    for command, extra in (("fgsm", ["--eps", "0.01"]), ("corrupt", ["--corruptions", "fog", "--severities", "1"])):
        res = invoke(command, "python:evil_models:make", *CLI, *extra, "--out", tmp_path / "out")
        assert_one_line_error(res, "python:evil_models:make", "imports and runs your code", "add --trust-code")
    with pytest.raises(RobustkitError, match="trust_code=True"):
        load_model("python:evil_models:make", device="cpu")
    assert not marker.exists() and "evil_models" not in sys.modules and not (tmp_path / "out").exists()
    load_model("python:evil_models:make", device="cpu", trust_code=True)
    assert marker.read_text() == "ran"                   # documented: trusting a source runs its code
    sys.modules.pop("evil_models", None)


@pytest.mark.parametrize("suffix", [".jit", ".torchscript"])
def test_every_torchscript_suffix_is_a_torchscript_source_that_needs_trust(suffix, tmp_path):
    """The documented TorchScript names (model.ts / model.jit / model.torchscript) all load as TorchScript with
    trust, and are refused without it like .ts (not read as a checkpoint)."""
    path = make_ts(tmp_path / f"model{suffix}")
    with pytest.raises(RobustkitError, match="TorchScript file, which can run code.*trust_code=True"):
        load_model(str(path), device="cpu")
    model, info = load_model(str(path), device="cpu", mean=[0.0], std=[1.0], trust_code=True)
    assert info.kind == "torchscript"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), _net()(x), atol=1e-5)
