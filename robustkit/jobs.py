"""Evaluate checkpoints into result files: FGSM/PGD sweeps and corruption grids, resumable cell by cell.

For every checkpoint the results go to ``<run>/eval/`` (or ``--out``). The JSON is rewritten atomically
with the finished cells (a corruption x severity, or a checkpoint's whole epsilon sweep): at most every
``RESUME_EVERY_S`` seconds while a grid runs, and whenever it stops (done, Ctrl-C, SIGTERM, an error), so a
run that is interrupted and started again skips what is done. A finished file is reused only if it was made with
the same checkpoint (sha256), data, limit and settings; ``force`` recomputes. The CLI drives these
functions and prints; nothing here prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from robustkit import __version__, checkpoint
from robustkit.data import limit_indices
from robustkit.distributed import world
from robustkit.errors import RobustkitError, first_line, sigterm_interrupts
from robustkit.evaluate import InFlight, accuracy, corruption_counts
from robustkit.io import writable_dir, write_json
from robustkit.prefetch import place
from robustkit.sources.data import check_decode
from robustkit.sources.models import ModelInfo


class Progress:
    """What the jobs report while they run (the CLI maps this onto one rich progress bar)."""

    def set_total(self, total: int) -> None: ...
    def advance(self, n: int = 1, label: str | None = None) -> None: ...
    def note(self, message: str) -> None: ...


@dataclass
class ModelOptions:
    """How non-checkpoint model sources are built (see robustkit.sources.models) and what data to use."""
    weights: str | None = None
    num_classes: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    trust_code: bool = False
    data: str | None = None          # --data: a data spec; default: a checkpoint's own test split
    resize: int | None = None
    crop: int | None = None
    classes: str | None = None       # --classes FILE
    decode: str = "cpu"              # --decode: folder images by Pillow (cpu, torchvision's standard) or nvJPEG (gpu)
    compile: bool = False            # --compile: the network compiled by TorchInductor (compiling.CompiledEval)
    fold_bn: bool | None = None      # --fold-bn: batch norms folded into the convolutions before them (models.fold)
    cudnn_benchmark: bool | None = None   # --cudnn-benchmark: the forward tuned by cuDNN (evaluate.CudnnTuned)
    fuse_conv: bool | None = None    # --fuse-conv (corrupt): folded, then conv + bias (+ residual) + ReLU as one cuDNN
    #                                  call (models.fuse); implies fold_bn
    # (None: the device's default, EVAL_SWITCH_DEFAULTS)


# What --fold-bn, --cudnn-benchmark and --fuse-conv are when not given, per device type. On CUDA --fuse-conv (and so
# the fold) is on for corrupt since an H100 measured it (2026-11-27, bench/gpu_check.sh quick's pipeline stage):
# CIFAR-10-C's 95 cells of WRN-28-2 at batch 5,000 took 4.29 s against 5.43 s without it, the same process warm
# (0.79x), every accuracy within 0.11 points of the plain network's (bf16 rounding). fgsm never fuses (its attacks
# need gradients). --cudnn-benchmark stays off: the same H100 timed it at 1.00x on WRN-28-2 and ResNet-50, plain or
# fused (quick-profile).
EVAL_SWITCH_DEFAULTS = {"cuda": {"fold_bn": False, "cudnn_benchmark": False, "fuse_conv": True}}
_SWITCHES = ("fold_bn", "cudnn_benchmark", "fuse_conv")


def resolve_switches(options: ModelOptions | None, device: torch.device,
                     note: Callable[[str], None] | None = None) -> ModelOptions:
    """``options`` (or the defaults) with --fold-bn, --cudnn-benchmark and --fuse-conv decided: as given, else the
    device's default (EVAL_SWITCH_DEFAULTS; off where the device type is not listed). --fuse-conv folds the batch
    norms first (they become the biases it fuses): it turns --fold-bn on; an explicit --no-fold-bn turns a default
    --fuse-conv off, and is refused next to an explicit --fuse-conv. --compile turns --fuse-conv off (TorchInductor
    fuses those ops its own way; the fold stays): an explicit --fuse-conv gets a ``note`` saying so. The result
    is what runs, and what the result files record."""
    opts = options or ModelOptions()
    defaults = EVAL_SWITCH_DEFAULTS.get(device.type, {})
    given = {k: getattr(opts, k) for k in _SWITCHES}
    chosen = {k: bool(defaults.get(k, False)) if v is None else bool(v) for k, v in given.items()}
    if chosen["fuse_conv"] and given["fold_bn"] is False:
        if given["fuse_conv"]:
            raise RobustkitError("--fuse-conv folds the batch norms into the convolutions first: drop --no-fold-bn "
                                 "(or --fuse-conv)")
        chosen["fuse_conv"] = False   # a device default gives way to an explicit --no-fold-bn
    if chosen["fuse_conv"]:
        chosen["fold_bn"] = True
        if opts.compile:
            chosen["fuse_conv"] = False
            if given["fuse_conv"] and note is not None:
                note("--fuse-conv: not with --compile (TorchInductor fuses these ops its own way; the batch norms "
                     "are still folded)")
    return dataclasses.replace(opts, **chosen)


@dataclass
class Target:
    """One model to evaluate and where its results go."""
    info: ModelInfo
    out_dir: Path

    @property
    def run(self) -> str:
        return self.info.name

    @property
    def raw(self) -> dict:
        return self.info.raw or {}


def targets(paths: Sequence[str | Path], out: str | Path | None = None,
            options: ModelOptions | None = None) -> list[Target]:
    """Resolve every model source (checkpoint files and folders of runs, torchvision:NAME, ...) before any
    work starts, so a bad one fails in one line with nothing written."""
    from robustkit.sources.models import is_checkpoint_source, resolve_model

    opts = options or ModelOptions()
    infos: list[ModelInfo] = []
    for source in paths:
        if is_checkpoint_source(str(source)):
            if opts.weights or opts.num_classes or opts.mean or opts.std:
                raise RobustkitError(f"{source} is a robustkit checkpoint: it carries its own weights, classes and "
                                     "mean/std; drop --weights/--num-classes/--mean/--std")
            infos += [resolve_model(str(f)) for f in checkpoint.find_checkpoints([source])]
        else:
            infos.append(resolve_model(str(source), weights=opts.weights, num_classes=opts.num_classes, mean=opts.mean,
                                       std=opts.std, trust_code=opts.trust_code))
    unique: dict[str, ModelInfo] = {}
    for info in infos:
        unique.setdefault(str(info.path.resolve()) if info.kind == "checkpoint" else info.source, info)
    infos = list(unique.values())
    result, names = [], {}
    for info in infos:
        if out is None:
            out_dir = info.path.parent / "eval" if info.kind == "checkpoint" else Path(f"eval-{info.name}")
        elif len(infos) == 1:
            out_dir = Path(out)
        else:
            names[info.name] = names.get(info.name, 0) + 1
            out_dir = Path(out) / (info.name if names[info.name] == 1 else f"{info.name}-{names[info.name]}")
        result.append(Target(info, out_dir))
    return result


class _TestData:
    """Evaluation data loaded once per (data spec, preprocessing, decoder, limit), kept on the device when it
    fits in half its free memory and streamed from the host otherwise (:func:`robustkit.prefetch.place`).

    The data is ``--data`` when given, else a checkpoint's own test split. Classes are checked against the
    model: a checkpoint's class names must match, any other model's number of outputs must equal the
    number of classes.
    """

    def __init__(self, device: torch.device, data_dir: str | None, limit: int | None,
                 options: ModelOptions | None = None, progress: Progress | None = None):
        self.device, self.data_dir, self.limit, self.progress = device, data_dir, limit, progress
        self.opts = options or ModelOptions()
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, str, list[str]]] = {}
        self.placement: str | None = None   # of the last set loaded: "resident" | "stream"

    def spec_for(self, info: ModelInfo) -> str:
        spec = self.opts.data or info.dataset
        if spec is None:
            raise RobustkitError(f"{info.source} does not name its data: give --data (folder:PATH, cifar10, ...)")
        return spec

    def get(self, t: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get_with_spec(t)[:2]

    def get_with_spec(self, t: Target) -> tuple[torch.Tensor, torch.Tensor, str]:
        from robustkit.sources.data import load_eval_data

        info = t.info
        key = self._key(t)
        spec, data_dir = key[0], key[1]
        if key not in self._cache:
            if self.opts.data is None and spec.startswith("folder:") and not Path(spec[len("folder:"):]).exists():
                # nobody typed this path here: it is where the checkpoint's training data was
                raise RobustkitError(f"{info.source} was trained on {spec}, which does not exist any more "
                                     "(moved?): give --data folder:PATH where its test images are now")
            data = load_eval_data(spec, input_size=info.input_size, data_dir=data_dir, resize=self.opts.resize,
                                  crop=self.opts.crop, classes_file=self.opts.classes, decode=self.opts.decode,
                                  device=self.device)
            idx = limit_indices(len(data.labels), self.limit)
            if self.limit is not None and self.limit > len(data.labels) and self.progress is not None:
                self.progress.note(f"--limit {self.limit} is more than the {len(data.labels)} test images of "
                                   f"{data.spec}: all {len(data.labels)} are used")
            images, labels = (data.images, data.labels) if idx is None else (data.images[idx], data.labels[idx])
            # on the device once if it fits in half its free memory, else streamed from the host (prefetch.py)
            images, self.placement = place(images, self.device)
            self._cache[key] = (images, labels.to(self.device), data.spec, list(data.classes))
        images, labels, loaded_spec, classes = self._cache[key]
        check_classes(info, classes, spec)   # every model, also the second one on data already loaded
        return images, labels, loaded_spec

    def num_classes(self, t: Target) -> int:
        """The number of classes of ``t``'s data (loaded by :meth:`get_with_spec`)."""
        return len(self._cache[self._key(t)][3])

    def _key(self, t: Target) -> tuple:
        """What the loaded data depends on: one load per key, shared by every model with it."""
        o = self.opts
        return (self.spec_for(t.info), self.data_dir or t.info.data_dir, t.info.input_size, o.resize, o.crop,
                o.classes, o.decode)


def check_classes(info: ModelInfo, classes: list[str], spec: str) -> None:
    """The model's classes and the data's must agree (one clear line otherwise)."""
    if info.kind == "checkpoint" and info.classes is not None:
        if list(classes) != list(info.classes):
            raise RobustkitError(f"the data {spec} has classes {classes[:5]}..., the checkpoint was trained on "
                                 f"{info.classes[:5]}...: point --data (or --data-dir) at the right data")
    elif info.num_classes is not None and info.num_classes != len(classes):
        raise RobustkitError(f"{info.source} has {info.num_classes} outputs but {spec} has {len(classes)} classes: "
                             "give --classes FILE (one name per line, the model's output order) or --num-classes")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    v = {"robustkit": __version__, "torch": str(torch.__version__)}
    for pkg in ("torchattacks", "imagecorruptions", "torchvision", "timm"):
        with contextlib.suppress(md.PackageNotFoundError):
            v[pkg] = md.version(pkg)
    return v


def _header(t: Target, kind: str, n: int, limit: int | None, device: torch.device, batch_size: int, amp: bool,
            channels_last: bool, dataset: str, opts: ModelOptions, decode: str | None = None) -> dict:
    """The settings a results file records; ``opts``: the resolved options (:func:`resolve_switches`), whose
    switches it records as they ran."""
    return {
        "kind": kind, **t.info.header(), "dataset": dataset,
        "decode": decode if str(dataset).startswith("folder:") else None,   # the decoder matters for folders only
        "split": "test", "n": n, "limit": limit, "batch_size": batch_size, "amp": amp,
        "channels_last": channels_last, "device": str(device), "compiled": opts.compile, "fold_bn": opts.fold_bn,
        "cudnn_benchmark": opts.cudnn_benchmark, "fuse_conv": opts.fuse_conv,
        "versions": _versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _build(t: Target, dev: torch.device, channels_last: bool, opts: ModelOptions | None, progress: Progress,
           probe: torch.Tensor | None = None, num_classes: int | None = None):
    """The model of ``t`` on ``dev``: batch norms folded (``--fold-bn``), convolution + ReLU fused (``--fuse-conv``;
    :func:`resolve_switches` turns it off under ``--compile``), compiled (``--compile``), the forward
    tuned by cuDNN (``--cudnn-benchmark``), in that order, when asked for. With ``probe`` (images of the
    evaluation data), it first runs on two of them: a forward that fails, or outputs other than (2,
    ``num_classes``), is one line here, not a traceback (or wrong accuracies) in the middle of the sweep."""
    model = t.info.build(dev, channels_last)
    if probe is not None:
        _check_outputs(model, t, probe[:2].to(dev), num_classes)
    own = False   # whether ``model`` is a copy of this function's own (fold_batchnorm's), to change in place
    if opts is not None and opts.fold_bn:
        from robustkit.models.fold import fold_batchnorm

        folded, _, why = fold_batchnorm(model)
        own, model = folded is not model, folded
        if why:
            progress.note(f"--fold-bn: nothing folded in {t.info.source}: {why}; evaluating it as it is")
    if opts is not None and opts.fuse_conv:
        from robustkit.models.fuse import fuse_conv_relu

        model, _, _, why = fuse_conv_relu(model, in_place=own)
        if why:
            progress.note(f"--fuse-conv: nothing fused in {t.info.source}: {why}")
    if opts is not None and opts.compile:
        from robustkit.compiling import CompiledEval

        model = CompiledEval(model, note=progress.note)
    if opts is not None and opts.cudnn_benchmark:   # outermost: compiled code calls cuDNN's convolutions at run time
        from robustkit.evaluate import CudnnTuned

        model = CudnnTuned(model)
    return model


def _check_outputs(model: torch.nn.Module, t: Target, images: torch.Tensor, num_classes: int | None) -> None:
    from robustkit.evaluate import as_float

    x = as_float(images)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:   # the model's own code: any error it raises is the user's to see, in one line
        raise RobustkitError(f"{t.info.source} fails on a batch of {tuple(x.shape)} images: {first_line(exc)}; "
                             "check the model's expected input (--resize/--crop, --data)") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0] or (
            num_classes is not None and out.shape[1] != num_classes):
        raise RobustkitError(f"{t.info.source} gives outputs of shape {shape} for {x.shape[0]} images, where "
                             f"(N, {num_classes}) logits are needed ({num_classes} classes in the data): give "
                             "--data with the model's classes, or --classes FILE in the model's output order")


def _write_json(path: Path, obj: dict) -> None:
    """Rank 0 alone writes (a single process is rank 0)."""
    if world().is_main:
        write_json(path, obj)


CELLS_AHEAD = 8   # cells a corruption grid launches before it reads the oldest one's counts (InFlight)
SWITCH_INTERVAL_S = 0.0002   # sys.setswitchinterval while a grid runs on an accelerator with threads beside it


@contextlib.contextmanager
def _quick_thread_switches(dev: torch.device):
    """While an evaluation grid (corrupt, fgsm) runs on an accelerator, Python hands its lock (the GIL) between
    threads every ``SWITCH_INTERVAL_S`` instead of every 5 ms; the previous interval comes back afterwards, however
    the grid ends.

    Every torch call of the grid's thread releases the lock while it launches its kernel; a thread beside it doing
    Python work (the corruptions' first calls, setting Triton up, the plots' warm-up) takes the lock then, and
    keeps it until Python's switch interval has passed: with the default 5 ms, each kernel launch of the grid could
    wait up to 5 ms while such a thread runs, and the device runs dry. On a model of the grid on the host
    (bench/model_grid_threads.py: a device thread running each of 95 cells for 37 ms, 200 torch calls per cell,
    1.2 s of Python in a third thread; the device alone: 3.52 s), with 8 cells launched ahead: 4.51 s at 5 ms,
    3.55 s at 0.2 ms; with no thread beside it the interval changes nothing (3.54 vs 3.53 s)."""
    import sys

    if dev.type == "cpu":
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


RESUME_EVERY_S = 2.0   # the most finished work that a hard kill (SIGKILL, a power cut) can cost a corruption grid


class _ResumePoints:
    """The results files of a running grid, rewritten at most every ``RESUME_EVERY_S`` seconds and always when
    the ``kept()`` block ends, however it ends (done, Ctrl-C, SIGTERM, an error).

    One atomic write (temp file, fsync, rename, fsync of the folder) costs milliseconds, during which the device
    waits; a CIFAR-10-C grid on an H100 has 95 cells of ~60 ms, so a write per cell was a few per cent of it.
    ``put`` takes a function that builds the file's content, called when it is written, so the file has every
    cell finished by then."""

    def __init__(self) -> None:
        self._pending: dict[Path, Callable[[], dict]] = {}
        self._last = time.monotonic()

    def put(self, path: Path, content: Callable[[], dict]) -> None:
        self._pending[path] = content
        if time.monotonic() - self._last >= RESUME_EVERY_S:
            self.flush()

    def forget(self, path: Path) -> None:
        """``path``'s pending content is no longer to be written: its final version has just been written."""
        self._pending.pop(path, None)

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for path, content in pending.items():
            _write_json(path, content())
        self._last = time.monotonic()

    @contextlib.contextmanager
    def kept(self):
        with sigterm_interrupts():
            try:
                yield self
            except BaseException:
                with contextlib.suppress(Exception):   # the error that stopped the grid is the one to report
                    self.flush()
                raise
            self.flush()


def _result_path(out_dir: Path, header: dict) -> Path:
    """Where this evaluation's result lives: one file per attack, one per corruption source (eval_stem)."""
    from robustkit.report.results import eval_stem

    return out_dir / f"{eval_stem(header)}.json"


def _cached(out_dir: Path, header: dict, keys: Sequence[str], force: bool,
            progress: Progress) -> tuple[Path, dict | None]:
    """(the file this evaluation writes, its earlier result if made with the same settings): an older version's
    file of another evaluation in the way is moved first, and other test data in the folder is noted."""
    path = _result_path(out_dir, header)
    # Before any work, on every rank (all of them then stop alike, none waits in a collective for a rank that
    # stopped): a file in the way or a read-only folder fails now, in one line
    writable_dir(out_dir)
    _keep_legacy(path, progress)
    _other_data_note(path, header, progress)
    return path, _previous(path, header, keys, force, progress)


def _legacy(path: Path, header: dict) -> Path | None:
    """Earlier versions wrote every attack to fgsm.json and released files to corruptions.json: such a file
    holding this evaluation's attack / source still serves as its cache (it is left as it is; the result
    is then written under its own name)."""
    legacy = path.with_name(f"{header['kind']}.json")   # the one file per kind older versions wrote
    if legacy == path or path.exists() or not legacy.exists():
        return None
    try:
        old = json.loads(legacy.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    key = "attack" if header["kind"] == "fgsm" else "source"
    return legacy if isinstance(old, dict) and old.get(key) == header.get(key) else None


def _keep_legacy(path: Path, progress: Progress) -> None:
    """Before this evaluation writes ``path``: when an older version left another evaluation's result there
    (a PGD sweep in fgsm.json, released results in corruptions.json), move it to its own name first, so that
    nothing is overwritten. Rank 0 alone moves; such a file is no cache for this evaluation on any rank."""
    from robustkit.report.results import eval_stem

    if not world().is_main or not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
        stem = eval_stem(old, old.get("kind") or path.stem) if isinstance(old, dict) else path.stem
    except (OSError, ValueError):
        return
    target = path.with_name(f"{stem}.json")
    if stem == path.stem or target.exists():
        return
    for suffix in (".json", ".csv", ".png"):
        if path.with_suffix(suffix).is_file():
            path.with_suffix(suffix).replace(target.with_suffix(suffix))
    progress.note(f"moved {path} ({stem} results, as an older version stored them) to {target}")


def _other_data_note(path: Path, header: dict, progress: Progress) -> None:
    """A note when the folder already holds results on other test data (not the released files, which differ
    by design): the report reads one folder as one model on one dataset, so its row would mix them."""
    if header.get("source") == "released" or not path.parent.is_dir():
        return
    for other in sorted(path.parent.glob("*.json")):
        if other.name == path.name:
            continue
        try:
            old = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(old, dict) and old.get("kind") in ("fgsm", "corruptions") and old.get("source") != "released"
                and old.get("dataset") and old.get("dataset") != header.get("dataset")):
            progress.note(f"{other} is on {old['dataset']}, this evaluation on {header.get('dataset')}: a report of "
                          f"{path.parent} would mix the two; give this one its own --out")
            return


def _own_eval_folder(folder: Path, header: dict) -> bool:
    """Whether ``folder`` is the ``eval/`` folder next to the checkpoint file being evaluated (its default --out)."""
    source = Path(str(header.get("model_source") or ""))
    return source.is_file() and (source.parent / "eval").resolve() == folder.resolve()


def _previous(path: Path, header: dict, keys: Sequence[str], force: bool, progress: Progress) -> dict | None:
    """The earlier result file, if it was made with the same settings (else None: start afresh)."""
    if force:
        return None
    path = _legacy(path, header) or path
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        progress.note(f"{path} is unreadable; recomputing it")
        return None
    if not isinstance(old, dict):
        progress.note(f"{path} is not a result file; recomputing it")
        return None
    same_file = bool(header.get("sha256")) and old.get("sha256") == header.get("sha256")
    changed = [k for k in keys if old.get(k, _SETTING_DEFAULTS.get(k)) != header.get(k)
               and not (k == "model_source" and same_file)]   # the same checkpoint, reached by another path
    if "model_source" in changed and not _own_eval_folder(path.parent, header):
        # another model's results (in a shared --out): never replaced without --force. A checkpoint's own eval/
        # folder is recomputed instead: the run's checkpoint file was replaced (trained on, or copied over)
        raise RobustkitError(f"{path} holds the results of another model ({old.get('model_source')}); give this "
                             f"one ({header.get('model_source')}) its own --out, or pass --force to replace them")
    if changed:
        progress.note(f"{path}: settings changed ({', '.join(changed)}); recomputing")
        return None
    return old


def _device_and_amp(device: str | None, amp: bool | None,
                    channels_last: bool | None) -> tuple[torch.device, bool, Callable, bool]:
    """The device, whether bf16 autocast is on, the autocast context, whether channels_last is on.

    Both default to on for CUDA and off for the CPU; either can be asked for on either device, so the
    CUDA code path (bf16 autocast, NHWC layout) runs, and is tested, on a CPU too.
    """
    dev = checkpoint.resolve_device(device)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp)
    autocast = functools.partial(torch.autocast, dev.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext
    use_cl = (dev.type == "cuda") if channels_last is None else bool(channels_last)
    return dev, use_amp, autocast, use_cl


def default_batch_size(device: torch.device) -> int:
    """fgsm's evaluation batch, and corrupt's on the CPU and for released corrupted images, when --batch-size is not
    given."""
    return 1000 if device.type == "cuda" else 250


CORRUPT_PIXELS_PER_BATCH = 1000 * 224 * 224   # corrupt's default batch on CUDA holds this many pixels per channel ...
CORRUPT_MAX_DEFAULT_BATCH = 5000              # ... in at most this many images


def default_corrupt_batch_size(device: torch.device, height: int, width: int) -> int:
    """corrupt's evaluation batch for generated corruptions of ``height`` x ``width`` images when --batch-size is not
    given: fgsm's (1000 on CUDA), but on CUDA images smaller than 224 px come in batches of as many pixels as 1000
    224-px images, up to 5000 images (32 px: 5000). A small image's batch of 1000 leaves the GPU waiting on the
    host's launches of each corruption's ops (measured on an H100, 2026-11-27: CIFAR-10-C's 19 x 5 grid of
    10,000 images at batch 5000 ran in 0.72x the default 1000's time, 10,000 in 0.69x; those two runs came after
    the one at 1000 in the same process, whose first calls, ~1 s, they did not pay). 5000, not 10,000, keeps
    a wide network's activations at 32 px within what ResNet-50's at 1000 x 224 px take."""
    base = default_batch_size(device)
    if device.type != "cuda":
        return base
    return max(base, min(CORRUPT_MAX_DEFAULT_BATCH, CORRUPT_PIXELS_PER_BATCH // max(1, height * width)))


def _cumulative(progress: Progress, label: str) -> Callable[[int], None]:
    """Adapt a callback that reports a running total to Progress.advance (increments)."""
    seen = [0]

    def call(total_done: int) -> None:
        progress.advance(total_done - seen[0], label=label)
        seen[0] = total_done
    return call


_FGSM_KEYS = ("model_source", "sha256", "dataset", "decode", "n", "limit", "attack", "attack_params", "batch_size", "amp")
_CORRUPTION_KEYS = ("model_source", "sha256", "dataset", "decode", "n", "limit", "preset", "storage", "source", "seed",
                    "batch_size", "amp")
# what a result file written before a setting existed was made with (older files lack the key)
_SETTING_DEFAULTS = {"storage": "float"}


def _parse_attack(attack: str, params: dict | None) -> tuple[str, str | None]:
    """("fgsm" | "pgd" | "torchattacks", the torchattacks class name or None); the attack and its
    parameters are checked here, before any checkpoint or data is read."""
    key = attack.strip()
    if key.lower() in ("fgsm", "pgd"):
        if params:
            raise RobustkitError("--attack-param is for --attack torchattacks:NAME; fgsm and pgd take their own flags")
        return key.lower(), None
    head, sep, name = key.partition(":")
    if head.lower() == "torchattacks" and sep and name.strip():
        from robustkit.attacks import check_torchattacks

        return "torchattacks", check_torchattacks(name.strip(), params)[0].__name__
    raise RobustkitError(f"unknown attack {attack!r}: use fgsm, pgd or torchattacks:NAME (e.g. torchattacks:AutoAttack)")


def _plots_ahead(dev: torch.device) -> bool:
    """Whether a grid on ``dev`` starts its plots' work in the background: on the rank that writes the result files,
    where the grid runs on an accelerator, whose thread mostly waits on the device meanwhile; on the CPU the work
    takes a core from the grid (measured: ~0.45 s less at the end, 0.1-0.6 s more for the grid, 2 cores)."""
    return dev.type != "cpu" and world().is_main


def _warm_up_plots(dev: torch.device) -> None:
    """The result files end with a plot, whose first drawing in a process costs ~0.3-0.4 s (imports, fonts): start
    that in the background now, while the grid runs (robustkit.report.plots), where :func:`_plots_ahead`."""
    from robustkit.report.plots import warm_up_in_background

    if _plots_ahead(dev):
        warm_up_in_background()


def _prepare_heatmaps(dev: torch.device, results: Sequence[dict]) -> None:
    """The frames of the heatmaps a corruption grid will draw (``results``: each as it will be when complete),
    made in the background while the grid runs, where :func:`_plots_ahead` (robustkit.report.plots)."""
    from robustkit.report.plots import prepare_heatmap_in_background

    if _plots_ahead(dev):
        for result in results:
            prepare_heatmap_in_background(result)


def run_fgsm(paths: Sequence[str | Path], eps: Sequence[float], *, attack: str = "fgsm", steps: int = 10,
             alpha: float | None = None, seed: int = 0, limit: int | None = None, batch_size: int | None = None,
             device: str | None = "auto", data_dir: str | None = None, out: str | Path | None = None,
             force: bool = False, amp: bool | None = None, channels_last: bool | None = None,
             attack_params: dict | None = None, progress: Progress | None = None,
             options: ModelOptions | None = None,
             on_result: Callable[[dict, list[Path]], None] | None = None) -> list[dict]:
    """FGSM (PGD, or any eps-bounded torchattacks attack) accuracy at every epsilon for every model source
    (checkpoints, torchvision:NAME, ...; ``options``); writes fgsm.{json,csv,png} into each one's results folder."""
    from robustkit.attacks import fgsm_sweep, pgd_sweep, torchattacks_sweep
    from robustkit.report import write_fgsm_outputs

    progress = progress or Progress()
    kind, ta_name = _parse_attack(attack, attack_params)
    if kind == "pgd" and steps < 1:
        raise RobustkitError("--steps must be >= 1 for pgd")
    eps = list(eps)
    tgts = targets(paths, out, options)
    dev, use_amp, _, use_cl = _device_and_amp(device, amp, channels_last)
    # never --fuse-conv: the attacks need gradients, which cuDNN's fused calls do not give
    options = resolve_switches(dataclasses.replace(options or ModelOptions(), fuse_conv=False), dev)
    decode = options.decode
    check_decode(decode, dev)
    if kind == "torchattacks":
        use_amp = False  # torchattacks runs the model as it is: fp32
    bs = batch_size or default_batch_size(dev)
    _warm_up_plots(dev)
    data = _TestData(dev, data_dir, limit, options, progress)
    if kind == "fgsm":
        params: dict = {}
    elif kind == "pgd":
        params = {"steps": steps, "alpha": alpha, "seed": seed}
    else:
        params = {"name": ta_name, **(attack_params or {}), "seed": seed}
    label = f"torchattacks:{ta_name}" if kind == "torchattacks" else kind
    jobs = []
    for t in tgts:
        images, labels, spec = data.get_with_spec(t)
        header = {**_header(t, "fgsm", len(labels), limit, dev, bs, use_amp, use_cl, spec, options, decode),
                  "attack": label,
                  "attack_params": params}
        _, old = _cached(t.out_dir, header, _FGSM_KEYS, force, progress)
        done = {r["eps"]: r for r in (old or {}).get("results", [])}
        todo = [e for e in eps if e not in done]
        jobs.append((t, images, labels, header, done, todo))
    progress.set_total(sum(len(j[2]) for j in jobs if j[5]))
    results = []
    with _quick_thread_switches(dev):   # the plots' warm-up runs beside the attacks
        for t, images, labels, header, done, todo in jobs:
            if todo:
                model = _build(t, dev, use_cl, options, progress, images, data.num_classes(t))
                advance = _cumulative(progress, f"{label} {t.run}")
                if 0.0 not in done and 0.0 not in todo:
                    todo = [0.0, *todo]                            # clean accuracy always
                common = dict(batch_size=bs, device=dev, progress=advance)
                if kind == "fgsm":
                    recs = fgsm_sweep(model, images, labels, todo, amp=use_amp, channels_last=use_cl, **common)
                elif kind == "pgd":
                    recs = pgd_sweep(model, images, labels, todo, steps=steps, alpha=alpha, seed=seed, amp=use_amp,
                                     channels_last=use_cl, **common)
                else:
                    recs = torchattacks_sweep(model, images, labels, todo, ta_name, attack_params, seed=seed,
                                              num_classes=t.info.num_classes, **common)
                done.update({r["eps"]: r for r in recs})
            records = sorted(done.values(), key=lambda r: r["eps"])
            result = {**header, "clean_accuracy": done[0.0]["accuracy"] if 0.0 in done else None, "results": records}
            files = write_fgsm_outputs(result, t.out_dir) if world().is_main else []
            if on_result and world().is_main:
                on_result(result, files)
            results.append(result)
    return results


def run_corruptions(paths: Sequence[str | Path], corruptions: Sequence[str], severities: Sequence[int], *,
                    preset: str = "auto", seed: int = 0, limit: int | None = None, batch_size: int | None = None,
                    storage: str = "float",
                    device: str | None = "auto", data_dir: str | None = None, out: str | Path | None = None,
                    force: bool = False, amp: bool | None = None, channels_last: bool | None = None,
                    progress: Progress | None = None, options: ModelOptions | None = None,
                    on_result: Callable[[dict, list[Path]], None] | None = None) -> list[dict]:
    """Accuracy under every (corruption, severity) for every model source; corruptions.{json,csv,png}.

    With ``options.data`` a released corrupted dataset (cifar10-c:PATH, imagenet-c:PATH) the released
    images are evaluated instead of generated ones (``source: released`` in the JSON). ``storage="released"``:
    each generated image is stored as the released files were (8-bit; + JPEG 85 for imagenet-c) before it is
    evaluated (``storage`` in the JSON)."""
    from robustkit.corruptions import check_storage, resolve_preset, warm_up
    from robustkit.report import write_corruption_outputs
    from robustkit.sources.data import is_released

    progress = progress or Progress()
    opts = options or ModelOptions()
    storage = check_storage(storage)
    tgts = targets(paths, out, opts)
    dev, use_amp, autocast, use_cl = _device_and_amp(device, amp, channels_last)
    opts = resolve_switches(opts, dev, progress.note)
    check_decode(opts.decode, dev)
    _warm_up_plots(dev)
    if is_released(opts.data):
        bs = batch_size or default_batch_size(dev)
        return _run_released(tgts, corruptions, severities, opts, limit=limit, bs=bs, dev=dev, use_amp=use_amp,
                             autocast=autocast, use_cl=use_cl, data_dir=data_dir, force=force, progress=progress,
                             on_result=on_result)
    data = _TestData(dev, data_dir, limit, opts, progress)
    cells = [(c, s) for c in corruptions for s in severities]
    jobs = []
    for t in tgts:
        images, labels, spec = data.get_with_spec(t)
        size = int(max(images.shape[-2:]))
        bs = batch_size or default_corrupt_batch_size(dev, *images.shape[-2:])
        header = {**_header(t, "corruptions", len(labels), limit, dev, bs, use_amp, use_cl, spec, opts, opts.decode),
                  "preset": resolve_preset(preset, size), "storage": storage, "source": "generated", "seed": seed,
                  "num_classes": t.info.num_classes}
        _, old = _cached(t.out_dir, header, _CORRUPTION_KEYS, force, progress)
        done = {(r["corruption"], r["severity"]): r for r in (old or {}).get("results", [])}
        clean = (old or {}).get("clean_accuracy")
        jobs.append([t, images, labels, header, done, clean, [c for c in cells if c not in done]])
    progress.set_total(sum(len(j[6]) for j in jobs))

    def snapshot(header, done, clean) -> dict:
        return _snapshot(header, done, clean, corruptions, cells)

    def when_complete(header, done, clean, todo, n) -> dict:   # the cells it will have are all a heatmap frame needs
        placeholders = {(c, s): {"corruption": c, "severity": s, "accuracy": 0.0, "n": n} for c, s in todo}
        return snapshot(header, {**done, **placeholders}, clean)

    _prepare_heatmaps(dev, [when_complete(header, done, clean, todo, len(labels))
                            for _, _, labels, header, done, clean, todo in jobs])

    # Cell-major within a group of checkpoints that share test data and preset: each corrupted batch is
    # generated once and fed to every model that still needs that cell.
    groups: dict[tuple, list] = {}
    for job in jobs:
        t, images = job[0], job[1]
        groups.setdefault((id(images), job[3]["preset"]), []).append(job)
    results = []
    with _quick_thread_switches(dev), _ResumePoints().kept() as points:   # (the warm-up threads run beside the grid)
        for group in groups.values():
            images, labels, preset, bs = group[0][1], group[0][2], group[0][3]["preset"], group[0][3]["batch_size"]
            todo = [cell for cell in cells if any(cell in job[6] for job in group)]
            # each corruption's first call in the process, made ahead of the cells in a thread (CUDA)
            with warm_up.for_grid(todo, images, dev, preset=preset, storage=storage, grid_batch=bs) as warm:
                models = {}
                for job in group:
                    t, _, labels_j, header, _, clean, todo_j = job
                    if todo_j or clean is None:
                        models[id(job)] = _build(t, dev, use_cl, opts, progress, images, data.num_classes(t))
                    if clean is None:
                        job[5] = accuracy(models[id(job)], images, labels_j, header["batch_size"], autocast, use_cl)

                def record(read, advance=True):   # cells whose counts were read back: into their results
                    for ((name, sev), needing), counts in read:
                        for job, count in zip(needing, counts):
                            t, _, labels_j, header, done, clean = job[:6]
                            done[(name, sev)] = {"corruption": name, "severity": sev,
                                                 "accuracy": count / max(1, len(labels)), "n": len(labels_j)}
                            points.put(_result_path(t.out_dir, header),
                                       functools.partial(snapshot, header, done, clean))
                        if advance:
                            progress.advance(len(needing), label=f"{name} s{sev}")

                # Each cell's counts are read back while the device works on the cells after it (InFlight): no
                # host sync between cells, so the device does not wait for the host's work between them.
                flight = InFlight(CELLS_AHEAD)
                try:
                    for cell in todo:
                        needing = [job for job in group if cell in job[6]]
                        warm.ready(cell)
                        flight.put((cell, needing), corruption_counts(
                            [models[id(j)] for j in needing], images, labels, *cell, preset=preset, seed=seed,
                            batch_size=bs, autocast=autocast, channels_last=use_cl, storage=storage))
                        record(flight.ready())
                    record(flight.drain())
                except BaseException:
                    with contextlib.suppress(Exception):   # the cells launched before an error or Ctrl-C are kept
                        record(flight.drain(), advance=False)
                    raise
            for job in group:   # (its result file, written in full here, replaces the pending resume point)
                t, _, _, header, done, clean = job[:6]
                result = snapshot(header, done, clean)
                files = write_corruption_outputs(result, t.out_dir) if world().is_main else []
                points.forget(_result_path(t.out_dir, header))
                if on_result and world().is_main:
                    on_result(result, files)
                results.append(result)
            del models
    return results


def _snapshot(header: dict, done: dict, clean: float | None, corruptions: Sequence[str], cells: Sequence) -> dict:
    """The result dict: header, the benchmark-protocol numbers (``protocol``; ``mean_common_accuracy`` is the
    15 x 5 number, None until all 75 cells are done), the mean over the cells done, and the records."""
    from robustkit.report.protocols import protocol_numbers

    records = sorted(done.values(), key=lambda r: (corruptions.index(r["corruption"]) if r["corruption"] in corruptions
                                                   else len(corruptions), r["corruption"], r["severity"]))
    accs = [r["accuracy"] for r in records]
    result = {**header, "clean_accuracy": clean, "results": records}
    numbers = protocol_numbers(result)
    return {**header, "protocol": numbers.to_json(), "mean_common_accuracy": numbers.accuracy, "clean_accuracy": clean,
            "mean_corruption_accuracy": sum(accs) / len(accs) if accs else None,
            "complete": all(c in done for c in cells), "results": records}


def _run_released(tgts: list[Target], corruptions: Sequence[str], severities: Sequence[int], opts: ModelOptions, *,
                  limit, bs, dev, use_amp, autocast, use_cl, data_dir, force, progress, on_result) -> list[dict]:
    """Evaluate the released images of every (corruption, severity) cell present (nothing is generated).

    Clean accuracy comes from the model's own test split when it names one (a robustkit checkpoint), else
    it is left empty. Cells the released set lacks are skipped when all corruptions were asked for, and an
    error when named explicitly.
    """
    from robustkit.corruptions import CORRUPTIONS
    from robustkit.report import write_corruption_outputs
    from robustkit.sources.released import open_released

    crop = opts.crop or (tgts[0].info.input_size if tgts and (tgts[0].info.input_size or 0) >= 100 else None)
    released = open_released(opts.data, classes_file=opts.classes, crop=crop)
    wanted = list(corruptions)
    if set(wanted) != set(CORRUPTIONS):
        missing = [c for c in wanted if c not in released.corruptions]
        if missing:
            raise RobustkitError(f"{released.root} has no {', '.join(missing)}: it has {', '.join(released.corruptions)}")
    names = [c for c in wanted if c in released.corruptions]
    cells = [(c, s) for c in names for s in severities]
    clean_data = _TestData(dev, data_dir, limit, dataclasses.replace(opts, data=None), progress)
    results = []
    progress.set_total(len(cells) * len(tgts))
    clamped = False
    with _ResumePoints().kept() as points:
        for t in tgts:
            if released.classes is not None:
                check_classes(t.info, released.classes, released.spec)
            header = {**_header(t, "corruptions", 0, limit, dev, bs, use_amp, use_cl, released.spec, opts),
                      "preset": f"released:{released.kind}", "storage": "released", "source": "released", "seed": None,
                      "num_classes": t.info.num_classes}
            path, old = _cached(t.out_dir, header, [k for k in _CORRUPTION_KEYS if k != "n"], force, progress)
            done = {(r["corruption"], r["severity"]): r for r in (old or {}).get("results", [])}
            clean = (old or {}).get("clean_accuracy")
            model = _build(t, dev, use_cl, opts, progress)
            if clean is None and t.info.dataset is not None:
                images, labels = clean_data.get(t)
                clean = accuracy(model, images, labels, bs, autocast, use_cl)
            for name, sev in cells:
                if (name, sev) in done:
                    progress.advance(1)
                    continue
                images, labels = released.cell(name, sev)
                if limit is not None and limit > len(labels) and not clamped:
                    clamped = True
                    progress.note(f"--limit {limit} is more than the {len(labels)} images of a cell of "
                                  f"{released.spec}: all {len(labels)} are used")
                idx = limit_indices(len(labels), limit)
                if idx is not None:
                    images, labels = images[idx], labels[idx]
                acc = accuracy(model, images, labels.to(dev), bs, autocast, use_cl)
                done[(name, sev)] = {"corruption": name, "severity": sev, "accuracy": acc, "n": len(labels)}
                header["n"] = len(labels)
                points.put(path, functools.partial(_snapshot, header, done, clean, names, cells))
                progress.advance(1, label=f"{name} s{sev} (released)")
            result = _snapshot({**header, "n": max((r["n"] for r in done.values()), default=0)}, done, clean, names,
                               cells)
            files = write_corruption_outputs(result, t.out_dir) if world().is_main else []
            points.forget(path)   # (the result file, written in full, replaces the pending resume point)
            if on_result and world().is_main:
                on_result(result, files)
            results.append(result)
    return results
