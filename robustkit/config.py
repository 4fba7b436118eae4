"""Training configuration: a dataclass of primitives, merged as defaults < config file < CLI flags.

The *resolved* config (every derived default filled in: steps, eval interval, resolutions) is what a run
writes to ``config.yaml`` and stores in its checkpoint, so a checkpoint describes itself.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustkit.errors import RobustkitError, first_line

METHODS = ("baseline", "gradaug", "cutmix", "shakedrop", "mean-teacher")  # = robustkit.methods.METHODS


def method_label(config: dict[str, Any]) -> str:
    """The name a run's method goes by in tables: gradaug-semi, cutmix-p0.5, gradaug-cutmix, ...

    Works on a config dict (a checkpoint's, a config.yaml's), so reports need no TrainConfig.
    """
    method = str(config.get("method") or "?")
    p = config.get("cutmix_prob") or 0
    if method == "gradaug":
        label = "gradaug-semi" if config.get("semi") else "gradaug"
        return f"{label}-cutmix" if p else label
    if method in ("cutmix", "baseline") and p:
        return f"cutmix-p{float(p):g}"
    return method


@dataclass
class TrainConfig:
    # data
    dataset: str = "cifar10"            # cifar10 | stl10 | digits | folder:PATH
    data_dir: str | None = None          # where torchvision datasets live (default ~/.cache/robustkit/data)
    labels: int | None = None            # labeled images, class-balanced; None = every label
    seed: int = 0                        # picks the labeled subset and every random draw of training
    # model and method
    arch: str = "wrn-28-2"
    method: str = "gradaug"              # baseline | gradaug
    semi: bool = False                   # GradAug-semi: sub-network loss on unlabeled images too
    subnets: int = 3                     # sub-networks per step (GradAug's n)
    min_width: float = 0.8               # lower bound of the sub-network width range [min_width, 1]
    resolutions: list[int] | None = None  # sub-network input sizes; default = size * (1, 7/8, 3/4)
    unlabeled_ratio: int = 1             # unlabeled batch = unlabeled_ratio * batch_size (semi, mean-teacher)
    cutmix_prob: float | None = None     # CutMix probability per batch (baseline, gradaug; cutmix: 0.5)
    consistency: float = 100.0           # mean-teacher: max weight of the consistency loss
    rampup: float = 0.3                  # mean-teacher: sigmoid ramp-up over this fraction of the steps
    ema_decay_rampup: float = 0.99       # mean-teacher: teacher EMA decay during the ramp-up ...
    ema_decay: float = 0.999             # ... and after it
    eval_model: str = "teacher"          # mean-teacher: which network is evaluated (teacher | student)
    flip: bool | None = None             # horizontal flips; default: on, off for digits
    # optimisation
    steps: int | None = None             # optimizer steps; default from --epochs or the label count
    epochs: float | None = None          # passes over the labeled subset (alternative to steps)
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    # bookkeeping
    eval_every: int | None = None        # steps between test evaluations + checkpoints; default steps/10
    eval_limit: int | None = None        # test images used by the in-training evaluation; None = all
    eval_batch_size: int = 512
    log_every: int = 20                  # steps between metrics lines / finite-loss checks
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    amp: bool | None = None              # bf16 autocast; None = on for CUDA, off for CPU
    channels_last: bool | None = None    # NHWC memory layout; None = on for CUDA, off for CPU
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into config.yaml

    @property
    def method_label(self) -> str:
        return method_label(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """The config of ``data``: unknown keys and values of the wrong type are one error naming them; numbers
        written as strings (YAML reads ``5e-4`` as one) are converted, and so are a whole float for a whole
        number, one size or "32,28,24" for ``resolutions`` and "all" for ``labels``."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise RobustkitError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
        return cls(**{k: _coerce(k, v, str(fields[k]), source) for k, v in data.items()})


def _coerce(name: str, value: Any, annotation: str, source: str) -> Any:
    """``value`` as the type the TrainConfig field ``name`` is annotated with, or a RobustkitError."""
    kinds = [k.strip() for k in annotation.split("|")]
    kind = kinds[0]

    def bad(what: str):
        return RobustkitError(f"{source}: {name} must be {what}, got {value!r}")

    def whole(v: Any) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            try:
                return int(v.strip())
            except ValueError:
                pass
        raise bad("a whole number" + (" or 'all'" if name == "labels" else ""))

    if value is None:
        if "None" in kinds:
            return None
        raise bad("given a value")
    if kind == "int":
        if name == "labels" and isinstance(value, str) and value.strip().lower() == "all":
            return None
        return whole(value)
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad("a number")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise bad("a string")
    if kind == "list[int]":
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
        try:
            return [whole(v) for v in items]
        except RobustkitError:
            raise bad("a list of whole numbers, e.g. [32, 28, 24]") from None
    if kind.startswith("dict"):
        if isinstance(value, dict):
            return value
        raise bad("a mapping of notes (key: value)")
    return value


def default_steps(labels: int | None, n_train: int, batch_size: int) -> int:
    """Training length when neither --steps nor --epochs is given (documented in the README).

    Few labels need many passes: 10k steps up to 1000 labels, 20k up to 4000, otherwise 100 epochs over
    the labeled set, never fewer than 1000 steps.
    """
    n = labels if labels is not None else n_train
    if n <= 1000:
        return 10_000
    if n <= 4000:
        return 20_000
    return max(1000, math.ceil(100 * n / batch_size))


# The paper-grid presets shipped inside the package (robustkit/configs/<name>.yaml); `--config NAME` finds them.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """Name -> file of every config shipped with robustkit, in natural order (cifar10_250 before cifar10_1000)."""
    def key(p: Path) -> list:
        return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", p.stem)]
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"), key=key)}


def describe_config(data: dict[str, Any]) -> str:
    """One line saying what a config trains: method, labels, dataset (from its values, not its comments)."""
    labels = data.get("labels")
    dataset = data.get("dataset", TrainConfig.dataset)
    return f"{method_label(data)}, {'all' if labels is None else labels} labels, {dataset}"


def find_config(spec: str | Path) -> Path:
    """A config file: ``spec`` itself if it is a file, else the shipped config of that name (``.yaml`` optional)."""
    p = Path(spec)
    if p.is_file():
        return p
    name = p.name[: -len(p.suffix)] if p.suffix in (".yaml", ".yml") else p.name
    shipped = shipped_configs()
    if name in shipped:
        if p.parent == Path("."):
            return shipped[name]
        raise RobustkitError(f"config file {spec} does not exist; robustkit ships a config of that name: "
                             f"--config {name}")
    raise RobustkitError(f"config {spec} does not exist: no such file, and no config of that name ships with robustkit; "
                         f"give a YAML file or one of {', '.join(shipped)} (robustkit train --list-configs)")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (a path, or the name of a shipped config) into a dict of TrainConfig fields
    (validated later)."""
    p = find_config(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RobustkitError(f"config file {p} is not valid YAML: {first_line(e, None)}") from None
    except UnicodeDecodeError:
        raise RobustkitError(f"config file {p} is not UTF-8 text: give a YAML file") from None
    if not isinstance(data, dict):
        raise RobustkitError(f"config file {p} must hold a mapping of option: value")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    TrainConfig.from_dict(data, source=str(p))  # validate keys early
    return data


# options that only some methods read, and those methods (method_label's names, less CutMix's suffixes)
METHOD_OPTIONS = {
    **dict.fromkeys(("subnets", "min_width", "resolutions"), ("gradaug", "gradaug-semi")),
    **dict.fromkeys(("consistency", "rampup", "ema_decay", "ema_decay_rampup", "eval_model"), ("mean-teacher",)),
    "unlabeled_ratio": ("gradaug-semi", "mean-teacher"),
}


def merge(file_values: dict[str, Any] | None, flags: dict[str, Any]) -> TrainConfig:
    """defaults < config file < CLI flags (flags that are None were not given).

    ``method: gradaug-semi`` (a flag or a config file's value) is ``method: gradaug`` with ``semi: true``. A flag
    that the run's method does not read (``--subnets`` with ``--method baseline``) is an error; a config file's
    key is not (a flag may change the file's method)."""
    given = {k: v for k, v in flags.items() if v is not None}
    values: dict[str, Any] = {**(file_values or {}), **given}
    if isinstance(values.get("method"), str) and values["method"].lower() == "gradaug-semi":
        if values.get("semi") is False:
            raise RobustkitError("method gradaug-semi is GradAug with --semi: drop --no-semi / semi: false")
        values.update(method="gradaug", semi=True)
    cfg = TrainConfig.from_dict(values)
    validate(cfg)
    method = "gradaug-semi" if cfg.method == "gradaug" and cfg.semi else cfg.method
    for key in given:
        users = METHOD_OPTIONS.get(key)
        if users and method not in users:
            flag = "--" + key.replace("_", "-")
            raise RobustkitError(f"{flag} is an option of --method {' / '.join(users)}; this run's method, "
                                 f"{method}, does not use it: drop {flag}")
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Checks that need no data. Dataset/arch names are checked by their modules."""
    if cfg.method not in METHODS:
        raise RobustkitError(f"unknown method {cfg.method!r}: use one of {', '.join(METHODS)}, gradaug-semi (= gradaug --semi)")
    if cfg.semi and cfg.method != "gradaug":
        raise RobustkitError("--semi is GradAug-semi and needs --method gradaug")
    if cfg.cutmix_prob is not None and cfg.method not in ("baseline", "cutmix", "gradaug"):
        raise RobustkitError(f"--cutmix-prob works with --method baseline, cutmix or gradaug, not {cfg.method}")
    if cfg.eval_model not in ("teacher", "student"):
        raise RobustkitError(f"--eval-model must be teacher or student, got {cfg.eval_model!r}")
    checks = [
        (cfg.batch_size >= 1, "--batch-size must be >= 1"),
        (math.isfinite(cfg.lr) and cfg.lr > 0, "--lr must be a finite number > 0"),
        (0 <= cfg.momentum < 1, "--momentum must be in [0, 1)"),
        (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0, "--weight-decay must be a finite number >= 0"),
        (cfg.subnets >= 1, "--subnets must be >= 1"),
        (0 < cfg.min_width <= 1, "--min-width must be in (0, 1]"),
        (cfg.unlabeled_ratio >= 1, "--unlabeled-ratio must be >= 1"),
        (cfg.cutmix_prob is None or 0 <= cfg.cutmix_prob <= 1, "--cutmix-prob must be in [0, 1]"),
        (cfg.consistency >= 0, "--consistency must be >= 0"),
        (0 <= cfg.rampup <= 1, "--rampup must be a fraction of the steps in [0, 1]"),
        (0 <= cfg.ema_decay_rampup < 1 and 0 <= cfg.ema_decay < 1, "EMA decays must be in [0, 1)"),
        (cfg.steps is None or cfg.steps >= 1, "--steps must be >= 1"),
        (cfg.epochs is None or cfg.epochs > 0, "--epochs must be > 0"),
        (cfg.steps is None or cfg.epochs is None, "give --steps or --epochs, not both"),
        (cfg.eval_every is None or cfg.eval_every >= 1, "--eval-every must be >= 1"),
        (cfg.eval_limit is None or cfg.eval_limit >= 1, "--eval-limit must be >= 1"),
        (cfg.log_every >= 1, "--log-every must be >= 1"),
        (cfg.resolutions is None or (len(cfg.resolutions) > 0 and all(int(r) >= 8 for r in cfg.resolutions)),
         "--resolutions must be a comma list of sizes >= 8, e.g. 32,28,24"),
    ]
    for ok, msg in checks:
        if not ok:
            raise RobustkitError(msg)


def resolve(cfg: TrainConfig, *, n_labeled: int, n_train: int, image_size: int, flip_default: bool) -> TrainConfig:
    """Fill every derived default; the result is what the run records."""
    r = dataclasses.replace(cfg)
    if r.method == "cutmix" and r.cutmix_prob is None:
        r.cutmix_prob = 0.5
    if r.method == "shakedrop" and "shakedrop" not in r.arch:
        r.arch = f"{r.arch}-shakedrop"
    if r.steps is None:
        r.steps = (math.ceil(r.epochs * n_labeled / r.batch_size) if r.epochs is not None
                   else default_steps(r.labels, n_train, r.batch_size))
        r.epochs = None
    if r.eval_every is None:
        r.eval_every = max(1, r.steps // 10)
    if r.resolutions is None:
        r.resolutions = sorted({max(8, round(image_size * f)) for f in (1.0, 7 / 8, 3 / 4)}, reverse=True)
    else:
        r.resolutions = [int(v) for v in r.resolutions]
        if max(r.resolutions) > 2 * image_size:
            raise RobustkitError(f"--resolutions {','.join(map(str, r.resolutions))}: the sub-networks' input sizes "
                                 f"must be at most twice the training images' {image_size} px (GradAug uses sizes "
                                 "at or below it, e.g. 32,28,24 for CIFAR)")
    if r.flip is None:
        r.flip = flip_default
    return r


def write_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
