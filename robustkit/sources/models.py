"""Model sources: anything that names a classifier -> an ``nn.Module`` on [0, 1] pixels plus what it is.

    robustkit checkpoint / run folder   runs/x, runs/x/checkpoint.pt (names its own data, classes, mean/std)
    torchvision:NAME                    torchvision.models.get_model(NAME), built without downloading
    timm:NAME                           timm.create_model(NAME) (pip install 'robustkit[timm]')
    model.pt2                           a torch.export program; can run code, so only with trust_code
    model.ts / model.jit                a TorchScript file; can run code, so only with trust_code
    python:MODULE:FUNCTION              FUNCTION() -> nn.Module; runs code, so only with trust_code

What can run code (:data:`RUNS_CODE`): ``torch.export.load`` unpickles every entry that the archive's own
config marks as pickled (``torch.load(weights_only=False)``, ``pickle.loads``), and ``torch.jit.load`` runs
TorchScript stored in the file (a module's ``__setstate__``, for one). These sources are refused without
``trust_code`` before the file is opened or anything is imported. Checkpoints and ``--weights`` ``.pth``
are read with ``weights_only=True``, ``.safetensors`` holds raw tensors only, and torchvision:/timm: run only
the installed library's code: none of these needs trust.

``--weights FILE`` (``.pth``/``.pt``: a state dict read with ``weights_only=True``; ``.safetensors``) fills
torchvision/timm/python models; a ``state_dict``/``model`` key and a DataParallel ``module.`` prefix are
handled. Normalisation lives in the wrapper (:class:`Normalized`), so attacks and corruptions always see
[0, 1] pixels: ImageNet mean/std for torchvision, the model's ``pretrained_cfg`` for timm, ``mean``/``std``
to override. Without weights the model keeps its random initialisation, and ``info.random_weights`` says so.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustkit.errors import RobustkitError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".ts", ".jit", ".torchscript")


class Normalized(nn.Module):
    """``model((x - mean) / std)``: a classifier that takes [0, 1] NCHW pixels."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


@dataclass
class ModelInfo:
    """What a model source resolved to. ``build(device, channels_last)`` makes the module (eval mode)."""

    source: str                      # as given
    kind: str                        # checkpoint | torchvision | timm | export | torchscript | python
    name: str                        # run name or a short model name (results folders, tables)
    build: Callable[[torch.device, bool], nn.Module] = field(repr=False)
    num_classes: int | None = None
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: int | None = None    # the side the model expects (224 for ImageNet models); None: data's own
    sha256: str = ""                 # of the checkpoint / weights / model file ("" for random weights)
    weights: str | None = None
    random_weights: bool = False
    dataset: str | None = None       # a robustkit checkpoint's test data (spec)
    data_dir: str | None = None
    raw: dict | None = field(default=None, repr=False)  # a robustkit checkpoint's dict
    path: Path | None = None         # the checkpoint / model file

    @property
    def run(self) -> str:
        return self.name

    def header(self) -> dict[str, Any]:
        """The model part of an eval JSON header."""
        cfg = (self.raw or {}).get("config") or {}
        from robustkit.config import method_label

        return {
            "model_source": self.source, "model_kind": self.kind, "weights": self.weights,
            "random_weights": self.random_weights, "sha256": self.sha256, "run": self.name,
            "method": method_label(cfg) if cfg else self.source,
            "arch": (self.raw or {}).get("arch") or self.source.split(":", 1)[-1],
            "labels": cfg.get("labels"), "seed_train": cfg.get("seed"),
            "checkpoint": str(self.path.resolve()) if self.path else None,
        }


# --------------------------------------------------------------------------------------------------
# Weights files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``), unwrapped and unprefixed."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise RobustkitError(f"--weights {p} {what}: give a .pth/.pt state dict or a .safetensors file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways
            raise RobustkitError(f"--weights {p} is not a readable safetensors file: {str(exc)[:160]}") from None
    else:
        try:
            with warnings.catch_warnings():  # a TorchScript archive: torch warns, then refuses it (weights_only)
                warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
                state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            first = f"{type(exc).__name__}: {first_line(exc)}"
            raise RobustkitError(f"--weights {p} cannot be read with weights_only=True (a pickled model or not a "
                                 f"torch file?): {first}; save model.state_dict() instead") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RobustkitError(f"--weights {p} holds no state dict of tensors (keys: {list(state)[:5] if isinstance(state, dict) else type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """Load ``state`` (read from ``path``) into ``model`` strictly; a mismatch is one line naming the keys
    and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shapes differ: {', '.join(shapes[:3])}{' ...' if len(shapes) > 3 else ''} (file vs model)")
        if missing:
            parts.append(f"missing in the file: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"not in {what}: {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        hint = " (a different --num-classes?)" if shapes and any("fc." in s or "head" in s or "classifier" in s
                                                                for s in shapes) else ""
        raise RobustkitError(f"--weights {path} do not fit {what}: {'; '.join(parts)}{hint}")
    model.load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# Resolution


def _finish(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def _num_classes_of(model: nn.Module) -> int | None:
    probe = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            probe = m
    return probe.out_features if probe is not None else None


def _torchvision(name: str, weights: str | None, num_classes: int | None) -> tuple[Callable[[], nn.Module], int | None]:
    import torchvision.models as tvm

    available = tvm.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise RobustkitError(f"torchvision has no model {name!r}: {hint}see torchvision.models.list_models()")

    def make() -> nn.Module:
        kwargs = {"weights": None}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return tvm.get_model(name, **kwargs)  # weights=None: nothing is downloaded
    return make, num_classes if num_classes is not None else 1000


def _timm(name: str, num_classes: int | None) -> tuple[Callable[[], nn.Module], dict]:
    try:
        import timm
    except ImportError:
        raise RobustkitError(f"timm:{name} needs timm: pip install 'robustkit[timm]'") from None
    available = timm.list_models()
    if name not in available and not timm.is_model(name):
        close = difflib.get_close_matches(name, available, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise RobustkitError(f"timm has no model {name!r}: {hint}see timm.list_models()")
    kwargs = {"pretrained": False}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    probe = timm.create_model(name, **kwargs)
    cfg = dict(getattr(probe, "pretrained_cfg", None) or {})
    return (lambda: timm.create_model(name, **kwargs)), {**cfg, "num_classes": _num_classes_of(probe), "probe": probe}


# Model sources that can run code while loading, and why: refused unless the user passes --trust-code.
RUNS_CODE = {
    "python": "imports and runs your code",
    "export": "is a torch.export program, which can run code while loading (entries its archive marks as "
              "pickled are unpickled)",
    "torchscript": "is a TorchScript file, which can run code while loading (the TorchScript stored in it, "
                   "e.g. a __setstate__)",
}


def _require_trust(what: str, kind: str, trust_code: bool) -> None:
    """One line saying why ``what`` can run code and how to allow it, unless the user trusts it; call it
    before anything of ``what`` is opened, unpickled or imported."""
    if not trust_code:
        raise RobustkitError(f"{what} {RUNS_CODE[kind]}: add --trust-code (trust_code=True in Python) "
                             "if you trust it")


def _python(spec: str, trust_code: bool) -> Callable[[], nn.Module]:
    _require_trust(f"python:{spec}", "python", trust_code)
    module_name, sep, fn_name = spec.rpartition(":")
    if not sep or not module_name or not fn_name:
        raise RobustkitError(f"python:{spec} must be python:MODULE:FUNCTION, e.g. python:mypkg.models:make_net")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RobustkitError(f"python:{spec}: cannot import {module_name} ({exc}); is it on PYTHONPATH?") from None
    except Exception as exc:   # the user's module raised while importing (a SyntaxError, its own code)
        raise RobustkitError(f"python:{spec}: importing {module_name} failed: {type(exc).__name__}: "
                             f"{first_line(exc)}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise RobustkitError(f"python:{spec}: {module_name} has no function {fn_name}")

    def make() -> nn.Module:
        try:
            model = fn()
        except Exception as exc:   # e.g. a function that needs arguments: robustkit calls it with none
            raise RobustkitError(f"python:{spec}: {fn_name}() failed: {type(exc).__name__}: {first_line(exc)} "
                                 "(robustkit calls it with no arguments)") from None
        if not isinstance(model, nn.Module):
            raise RobustkitError(f"python:{spec} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    return make


class _Exported(nn.Module):
    """A torch.export program's module, shielded from ``train()``/``eval()`` (which it does not support):
    it is held outside the module tree, but moves with ``.to()`` and shows its parameters."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def _apply(self, fn, recurse=True):
        object.__setattr__(self, "inner", self.inner._apply(fn))
        return self

    def parameters(self, recurse: bool = True):
        return self.inner.parameters(recurse)


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Silence logger ``name`` (warnings and below) for the block: its failure is reported as one line instead."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _file_model(path: Path, trust_code: bool) -> tuple[str, Callable[[], nn.Module]]:
    _require_trust(str(path), "export" if path.suffix in EXPORT_SUFFIXES else "torchscript", trust_code)
    if path.suffix in EXPORT_SUFFIXES:
        def make() -> nn.Module:
            try:
                with _quiet_logger("torch.export"):   # it logs the traceback of a file it cannot read, then raises
                    return _Exported(torch.export.load(str(path)).module())
            except Exception as exc:  # noqa: BLE001
                raise RobustkitError(f"{path} is not a readable torch.export program: {first_line(exc, 300)}") from None
        return "export", make

    def make_ts() -> nn.Module:
        try:
            with warnings.catch_warnings():   # torch >= 2.10 deprecates TorchScript: a warning per load, not ours
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
                return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise RobustkitError(f"{path} is not a readable TorchScript file: {first_line(exc, 300)}") from None
    return "torchscript", make_ts


def _checkpoint(source: str) -> ModelInfo:
    from robustkit import checkpoint

    path = checkpoint.resolve_path(source)
    raw = checkpoint.read(path)
    name = path.parent.name if path.name == checkpoint.FILENAME else path.stem
    data = raw.get("dataset") or {}   # none: the evaluation asks for --data
    return ModelInfo(
        source=source, kind="checkpoint", name=name,
        build=lambda device, cl: checkpoint.build_model(raw, device, channels_last=cl),
        num_classes=len(raw.get("classes") or []) or None, classes=list(raw.get("classes") or []) or None,
        mean=tuple(raw.get("mean") or ()) or None, std=tuple(raw.get("std") or ()) or None,
        sha256=checkpoint.sha256(path), dataset=data.get("spec"), data_dir=data.get("data_dir"),
        raw=raw, path=path)


def is_checkpoint_source(source: str) -> bool:
    head = str(source).split(":", 1)[0].lower()
    if head in ("torchvision", "timm", "python"):
        return False
    return Path(source).suffix not in EXPORT_SUFFIXES + TORCHSCRIPT_SUFFIXES


def resolve_model(source: str, *, weights: str | None = None, num_classes: int | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  trust_code: bool = False, input_size: int | None = None) -> ModelInfo:
    """Resolve one model source (see the module docstring) without building it on a device yet."""
    source = str(source)
    if is_checkpoint_source(source):
        if weights is not None or num_classes is not None or mean is not None or std is not None:
            raise RobustkitError(f"{source} is a robustkit checkpoint: it carries its own weights, classes and "
                                 "mean/std; drop --weights/--num-classes/--mean/--std")
        return _checkpoint(source)
    head, _, rest = source.partition(":")
    head = head.lower()
    info: dict[str, Any] = {"input_size": input_size}
    if head == "torchvision":
        make, n = _torchvision(rest, weights, num_classes)
        kind, name = "torchvision", rest
        dmean, dstd = IMAGENET_MEAN, IMAGENET_STD
        info["input_size"] = input_size or 224
        info["num_classes"] = n
    elif head == "timm":
        make, cfg = _timm(rest, num_classes)
        kind, name = "timm", rest
        dmean, dstd = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
        size = (cfg.get("input_size") or (3, 224, 224))[-1]
        info["input_size"] = input_size or int(size)
        info["num_classes"] = cfg.get("num_classes")
    elif head == "python":
        make = _python(rest, trust_code)
        kind, name = "python", rest.rpartition(":")[2]
        dmean, dstd = IMAGENET_MEAN, IMAGENET_STD
        info["num_classes"] = num_classes
    else:
        path = Path(source)
        if not path.is_file():
            raise RobustkitError(f"model file {path} does not exist")
        kind, make = _file_model(path, trust_code)
        name = path.stem
        dmean, dstd = IMAGENET_MEAN, IMAGENET_STD
        if weights is not None:
            raise RobustkitError(f"{path} holds its own weights: drop --weights")
        info["num_classes"] = num_classes
    if mean is not None and len(mean) not in (1, 3) or std is not None and len(std) not in (1, 3):
        raise RobustkitError("--mean and --std take 1 or 3 comma-separated numbers, e.g. --mean 0.5,0.5,0.5")
    if std is not None and any(s <= 0 for s in std):
        raise RobustkitError("--std values must be > 0")
    m = tuple(float(v) for v in (mean if mean is not None else dmean))
    s = tuple(float(v) for v in (std if std is not None else dstd))
    m, s = (m * 3 if len(m) == 1 else m), (s * 3 if len(s) == 1 else s)
    what = f"{kind}:{name}"

    def build(device: torch.device, channels_last: bool) -> nn.Module:
        model = make()
        if weights is not None:
            load_weights(model, state, weights, what)
        return _finish(Normalized(model, m, s), device, channels_last)

    state = None
    if weights is not None:  # read once, and check the fit now, before any data is read
        state = read_state_dict(weights)
        load_weights(make(), state, weights, what)
    from robustkit.checkpoint import sha256

    file_hash = sha256(weights) if weights else (sha256(source) if kind in ("export", "torchscript") else "")
    return ModelInfo(source=source, kind=kind, name=f"{kind}-{name}".replace("/", "_"), build=build,
                     num_classes=info.get("num_classes"), mean=m, std=s, input_size=info.get("input_size"),
                     sha256=file_hash, weights=str(weights) if weights else None,
                     random_weights=weights is None and kind in ("torchvision", "timm"),
                     path=Path(source) if kind in ("export", "torchscript") else None)


def load_model(source: str, weights: str | None = None, *, device: str | torch.device | None = None,
               num_classes: int | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, trust_code: bool = False,
               channels_last: bool | None = None) -> tuple[nn.Module, ModelInfo]:
    """``(model on [0, 1] pixels in eval mode, info)`` for any model source. See the module docstring.

    ``trust_code=True`` allows the sources that can run code while loading (``.pt2``, TorchScript,
    ``python:``; see :data:`RUNS_CODE`); off by default, and they are then refused before anything is read."""
    from robustkit.checkpoint import resolve_device

    info = resolve_model(source, weights=weights, num_classes=num_classes, mean=mean, std=std, trust_code=trust_code)
    dev = resolve_device(device)
    model = info.build(dev, (dev.type == "cuda") if channels_last is None else channels_last)
    return model, info
