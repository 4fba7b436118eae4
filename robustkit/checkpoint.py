"""Checkpoints that describe themselves and never run code.

A checkpoint is a dict of tensors and primitives only (so ``torch.load(weights_only=True)`` reads it):
model weights, architecture name + arguments, the resolved training config, dataset spec, class names,
mean/std, labeled indices, step, optimizer state, metrics and versions. ``fgsm`` and ``corrupt`` need no
flag to rebuild the model or find its test data.

Writes are atomic (temp file, fsync, rename): a killed process leaves the previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from robustkit.errors import RobustkitError, first_line
from robustkit.io import atomic_path

FORMAT = "robustkit-checkpoint"
FORMAT_VERSION = 1
FILENAME = "checkpoint.pt"
_INFO_KEYS = ("config", "arch", "arch_kwargs", "dataset", "classes", "mean", "std", "labeled_indices",
              "step", "total_steps", "metrics", "versions", "finished", "created", "elapsed_s")


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically to ``path``."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def resolve_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder holding ``checkpoint.pt``."""
    p = Path(path)
    if p.is_dir():
        if (p / FILENAME).is_file():
            return p / FILENAME
        raise RobustkitError(f"{p} is a folder without {FILENAME}: give a checkpoint file or a run folder holding one")
    if not p.exists():
        raise RobustkitError(f"no checkpoint at {p}: give a {FILENAME} file or a run folder (robustkit train --out RUN writes one)")
    return p


MODEL_KEYS = ("model", "arch", "arch_kwargs")   # what building the model reads
RESUME_KEYS = MODEL_KEYS + ("config", "optimizer", "labeled_indices", "mean", "std", "step", "metrics")
# what each field holds, checked whenever it is present: a damaged or hand-edited checkpoint is one line, not a
# TypeError deep inside training or evaluation
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "format_version": (int,), "model": (dict,), "arch": (str,), "arch_kwargs": (dict,), "config": (dict,),
    "dataset": (dict,), "classes": (list, tuple), "mean": (list, tuple), "std": (list, tuple),
    "labeled_indices": (torch.Tensor,), "step": (int,), "total_steps": (int,), "optimizer": (dict,),
    "metrics": (list,), "finished": (bool,), "elapsed_s": (int, float), "method_state": (dict,),
    "eval_weights": (str,),
}


def _field_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a checkpoint dict (None: nothing)."""
    for key, types in FIELD_TYPES.items():
        if key in data and (not isinstance(data[key], types) or (types == (int,) and isinstance(data[key], bool))):
            want = " or ".join(t.__name__ for t in types)
            return f"its {key!r} should be {want}, not {type(data[key]).__name__}"
    weights = {"model": data.get("model", {}), **data.get("method_state", {})}
    for key, state in weights.items():
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            return f"its {key!r} weights are not a dict of tensors"
    if "dataset" in data and not isinstance(data["dataset"].get("spec"), str):
        return "its 'dataset' names no data (no 'spec')"
    return None


def read(path: str | Path, keys: tuple[str, ...] = MODEL_KEYS) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; every failure is one clear RobustkitError, a checkpoint
    without one of ``keys`` too (:data:`RESUME_KEYS` for continuing its run)."""
    p = resolve_path(path)
    try:
        with warnings.catch_warnings():  # a TorchScript archive: torch warns, then refuses it (weights_only)
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
            data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _looks_like_torch_file(p):  # text or other bytes that the unpickler read as opcodes
            raise RobustkitError(f"{p} is not a readable PyTorch file (neither a zip archive nor a pickle: not a "
                                 "checkpoint?)") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        first = f"it references {found.group(1)}" if found else "unsupported object"
        raise RobustkitError(
            f"{p} holds Python objects that would run code on loading; robustkit only loads plain tensors "
            f"(weights_only=True) and refused it: {first}") from None
    except Exception as e:  # garbage input can fail in many ways inside torch.load (KeyError, EOFError, ...)
        reason = first_line(e)
        if "TorchScript archive" in reason:
            raise RobustkitError(f"{p} is a TorchScript file, not a checkpoint, and loading it can run code: name "
                                 "it .ts and add --trust-code if you trust it") from None
        if not _looks_like_torch_file(p):   # e.g. KeyError: 101, the unpickler reading text as opcodes
            raise RobustkitError(f"{p} is not a readable PyTorch file (neither a zip archive nor a pickle: not a "
                                 "checkpoint?)") from None
        raise RobustkitError(f"{p} is not a readable PyTorch file (truncated or not a checkpoint?): "
                             f"{type(e).__name__}: {reason}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RobustkitError(f"{p} is a PyTorch file but not a robustkit checkpoint: train one with `robustkit train`")
    version = data.get("format_version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:   # before the fields: a newer format may change them
        raise RobustkitError(f"{p} was written by a newer robustkit (format {version}): upgrade robustkit")
    missing = [k for k in keys if k not in data]
    problem = _field_problem(data) or (f"it has no {', '.join(missing)}" if missing else None)
    if problem:
        raise RobustkitError(f"{p} is a damaged robustkit checkpoint: {problem}")
    return data


def _looks_like_torch_file(path: Path) -> bool:
    """What ``torch.save`` writes: a zip archive, or (the legacy format) a pickle, which opens with the
    PROTO opcode 0x80. Anything else that fails to unpickle is not a PyTorch file at all."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; "cuda" without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RobustkitError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobustkitError(f"--device {device} was asked for but no CUDA GPU is visible: use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RobustkitError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type not in ("cpu", "cuda"):
        raise RobustkitError(f"unsupported device {device!r}: use auto, cpu, cuda or cuda:N")
    return dev


def build_model(data: dict[str, Any], device: torch.device, channels_last: bool | None = None) -> torch.nn.Module:
    """The checkpoint's model on ``device`` in eval mode; ``channels_last`` (default: on for CUDA) lays the
    weights out NHWC, the fast layout of CUDA's convolutions (also usable on the CPU)."""
    from robustkit.models import create_model

    # Methods that keep other weights (Mean Teacher's teacher) name the ones to evaluate in "eval_weights".
    which = data.get("eval_weights") or "model"
    weights = data["model"] if which == "model" else (data.get("method_state") or {}).get(which)
    if weights is None:
        raise RobustkitError(f"checkpoint names eval_weights {which!r} but does not hold them: it is damaged")
    # Built without memory (meta), then given the checkpoint's tensors: no random initialisation that the weights
    # would overwrite (a WRN-28-2: 0.10 -> 0.045 s on 2 cores); a model that keeps a tensor outside its state dict
    # (a non-persistent buffer, which the meta build cannot give a value) is built the ordinary way instead.
    for meta in (True, False):
        try:
            with torch.device("meta") if meta else contextlib.nullcontext():
                model = create_model(data["arch"], **data["arch_kwargs"])
        except TypeError as e:   # arch_kwargs of another architecture (or robustkit version)
            raise RobustkitError(f"checkpoint's arch_kwargs do not fit {data['arch']}: {first_line(e)}: it is "
                                 "damaged") from None
        try:   # (assigned: copies on the device, so that the model never shares memory with ``data``)
            model.load_state_dict({k: v.to(device, copy=True) if torch.is_tensor(v) else v for k, v in weights.items()}
                                  if meta else weights, assign=meta)
        except RuntimeError as e:
            raise RobustkitError(f"checkpoint weights do not fit {data['arch']}: {first_line(e)}") from None
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            break
    model.to(device)
    if (device.type == "cuda") if channels_last is None else channels_last:
        model.to(memory_format=torch.channels_last)
    return model.eval()


def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> tuple[torch.nn.Module, dict]:
    """Load a robustkit checkpoint: ``(model, info)``.

    The model is in eval mode on ``device`` (default: CUDA if available) and takes images in [0, 1]
    (NCHW); it normalises inside. ``info`` holds the resolved ``config``, the ``dataset`` spec,
    ``classes``, ``labeled_indices``, ``metrics``, ``mean``/``std``, ``step``, ``versions`` and ``path``.
    """
    data = read(path)
    model = build_model(data, resolve_device(device))
    info = {k: data.get(k) for k in _INFO_KEYS}
    info["path"] = str(resolve_path(path).resolve())
    cfg = info.get("config") or {}
    from robustkit.config import method_label

    info["method"] = method_label(cfg) if cfg else None
    return model, info


# PREFIX:REST where PREFIX is a bare word (no path separator): how torchvision:NAME and the like are spelled.
_SOURCE_PREFIX = re.compile(r"[A-Za-z][\w.+-]*:")


def find_checkpoints(paths: list[str | Path]) -> list[Path]:
    """Checkpoint files named by ``paths``: files as given, folders searched recursively (sorted)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            hits = sorted(p.rglob(FILENAME))
            if not hits:
                raise RobustkitError(f"no {FILENAME} found below {p}: train one with `robustkit train --out {p}/NAME`")
            found.extend(hits)
        elif _SOURCE_PREFIX.match(str(raw)):
            prefix = str(raw).split(":", 1)[0]
            raise RobustkitError(f"{raw} does not exist, and {prefix}: is not a kind of model source: give checkpoint "
                                 "files or run folders, torchvision:NAME, timm:NAME, or (with --trust-code) "
                                 "python:MODULE:FUNCTION or exported model.pt2 / model.ts files")
        else:
            raise RobustkitError(f"{p} does not exist: give checkpoint files or folders holding runs")
    unique: dict[Path, Path] = {}
    for f in found:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
