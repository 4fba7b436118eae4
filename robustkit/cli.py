"""The robustkit command line: each command parses, makes one library call and prints where results went."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from robustkit.errors import RobustkitError, first_line

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="How robust is this image classifier, and how much does it get out of few labels?",
)


def _version(value: bool) -> None:
    if value:
        from robustkit import __version__

        typer.echo(f"robustkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False,
) -> None:
    """How robust is this image classifier, and how much does it get out of few labels?"""


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def friendly(fn):
    """RobustkitError, an OSError or running out of device memory -> one line on stderr + its exit code; Ctrl-C ->
    exit 130. No tracebacks."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from robustkit.io import tidy_on_error

        try:
            with tidy_on_error():   # a command that fails leaves no empty --out folder behind
                return fn(*args, **kwargs)
        except RobustkitError as e:
            rank = _rank()
            if rank and not e.every_rank:
                raise typer.Exit(e.exit_code) from None   # rank 0 says it for the whole torchrun job
            _fail(f"(rank {rank}) {e}" if rank else str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except RuntimeError as e:
            if type(e).__name__ != "OutOfMemoryError":   # torch.OutOfMemoryError, matched by its name
                raise
            gist = first_line(e).split(". ")[0]   # e.g. "CUDA out of memory", without the allocator's statistics
            _fail(f"out of memory ({gist}): pass a smaller --batch-size")
        except OSError as e:   # a file or folder the command could not read or write (what the checks missed)
            paths = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
            _fail(f"{e.strerror or e}{': ' + paths if paths else ''} (check the path, its permissions and the free "
                  "space)", 2)
    return wrapper


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): errors of other ranks say which rank they come from."""
    import os

    from robustkit.distributed import launched

    return int(os.environ.get("RANK", "0") or 0) if launched() else 0


def _parse_labels(text: Optional[str]) -> Optional[int]:
    if text is None or text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise RobustkitError(f"--labels takes a whole number or 'all', got {text!r}") from None
    if n < 1:
        raise RobustkitError(f"--labels must be >= 1 (or 'all'), got {n}")
    return n


def _comma_list(text: Optional[str], flag: str, kind=int, form: str = "a comma list of whole numbers, e.g. 32,28,24"):
    """``"a,b,c"`` -> [kind(a), kind(b), kind(c)] (None passes through); a bad item is one clear error."""
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",")]   # an empty item (32,,28) is as bad as a wrong one
    except ValueError:
        raise RobustkitError(f"{flag} takes {form}; got {text!r}") from None
    if kind is float and not all(math.isfinite(v) for v in values):
        raise RobustkitError(f"{flag} takes finite numbers; got {text!r}")
    return values


def default_run_dir(cfg) -> Path:
    name = cfg.dataset.split(":", 1)[-1].rstrip("/").split("/")[-1] or "data"
    labels = "all" if cfg.labels is None else str(cfg.labels)
    return Path("runs") / f"{name}-{labels}-{cfg.method_label}-s{cfg.seed}"


@app.command()
@friendly
def train(
    dataset: Annotated[Optional[str], typer.Option(help="cifar10 | stl10 | digits | folder:PATH (ImageFolder with train/ and test/) [cifar10]")] = None,
    labels: Annotated[Optional[str], typer.Option(help="labeled images, class-balanced (N divisible by the classes), or 'all' [all]")] = None,
    method: Annotated[Optional[str], typer.Option(help="baseline | gradaug | gradaug-semi | cutmix | shakedrop | "
                                                      "mean-teacher [gradaug]")] = None,
    semi: Annotated[Optional[bool], typer.Option("--semi/--no-semi", help="GradAug-semi: sub-network loss on unlabeled images too")] = None,
    arch: Annotated[Optional[str], typer.Option(help="wrn-D-K, e.g. wrn-28-2 [wrn-28-2]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="optimizer steps (default by label count, see README)")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="passes over the labeled subset (instead of --steps)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="labeled images per step [64]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate, cosine decay [0.1]")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="SGD nesterov momentum [0.9]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="[5e-4]")] = None,
    subnets: Annotated[Optional[int], typer.Option(help="GradAug sub-networks per step [3]")] = None,
    min_width: Annotated[Optional[float], typer.Option(help="lower bound of sub-network widths [0.8]")] = None,
    resolutions: Annotated[Optional[str], typer.Option(help="sub-network input sizes, e.g. 32,28,24 [size x 1, 7/8, 3/4]")] = None,
    unlabeled_ratio: Annotated[Optional[int], typer.Option(help="unlabeled batch = ratio x batch size (semi, "
                                                                 "mean-teacher) [1]")] = None,
    cutmix_prob: Annotated[Optional[float], typer.Option(help="CutMix probability per batch (baseline, gradaug: "
                                                               "GradAug + CutMix) [cutmix: 0.5]")] = None,
    consistency: Annotated[Optional[float], typer.Option(help="mean-teacher: consistency weight [100]")] = None,
    rampup: Annotated[Optional[float], typer.Option(help="mean-teacher: ramp-up, fraction of the steps [0.3]")] = None,
    eval_model: Annotated[Optional[str], typer.Option(help="mean-teacher: evaluate the teacher or the student "
                                                            "[teacher]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="labeled subset + all training randomness [0]")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="steps between test evaluations and checkpoints [steps/10]")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(help="test images used during training [all]")] = None,
    log_every: Annotated[Optional[int], typer.Option(help="steps between metrics lines and finite-loss checks [20]")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="folder of torchvision datasets [~/.cache/robustkit/data]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N [auto]")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="bf16 autocast [on for CUDA, off for CPU]")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last",
                                                          help="NHWC memory layout [on for CUDA, off for CPU]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder [runs/<data>-<labels>-<method>-s<seed>]")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the run in this folder from its checkpoint")] = None,
    config: Annotated[Optional[str], typer.Option(help="YAML file of options, or the name of a config shipped with "
                                                       "robustkit, e.g. cifar10_250_gradaug_semi (flags override it)")] = None,
    list_configs: Annotated[bool, typer.Option("--list-configs", help="list the shipped configs (name: method, "
                                                                       "labels, dataset) and exit")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show the progress bar")] = True,
    stop_at: Annotated[Optional[int], typer.Option(help="stop after this step with a checkpoint; continue later with "
                                                         "--resume (jobs on time-limited queues)")] = None,
    sync_bn: Annotated[Optional[bool], typer.Option("--sync-bn/--no-sync-bn", help="under torchrun: BatchNorm "
                                                    "statistics over all processes' batches [on under torchrun]")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="fixed-shape steps (masked "
                                                    "sub-networks) for baseline, gradaug, cutmix in one process, "
                                                    "compiled by TorchInductor (~20 s to 1 min up front, then faster "
                                                    "steps: 1.2-1.3x on an H100 and on the CPU). Default on CUDA: the "
                                                    "same steps captured as CUDA graphs, compiled too for runs of "
                                                    "50,000 steps or more (a note says so); on the CPU: eager steps. "
                                                    "--no-compile: eager steps everywhere")] = None,
):
    """Train a WideResNet on a class-balanced labeled subset: baseline, GradAug, GradAug-semi, CutMix,
    ShakeDrop or Mean Teacher. Under torchrun: DistributedDataParallel, --batch-size is the global batch."""
    from robustkit.config import load_config_file, merge

    if list_configs:
        _print_configs()
        return
    from robustkit.train import fit

    flags = dict(dataset=dataset, labels=_parse_labels(labels), method=method, semi=semi, arch=arch, steps=steps,
                 epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                 subnets=subnets, min_width=min_width, resolutions=_comma_list(resolutions, "--resolutions"),
                 unlabeled_ratio=unlabeled_ratio, cutmix_prob=cutmix_prob, consistency=consistency, rampup=rampup,
                 eval_model=eval_model, seed=seed, eval_every=eval_every, eval_limit=eval_limit, log_every=log_every,
                 data_dir=data_dir, amp=amp, channels_last=channels_last)
    if resume is not None:
        given = sorted(k.replace("_", "-") for k, v in flags.items() if v is not None)
        if given or config is not None or out is not None:
            raise RobustkitError(f"--resume continues with the run's saved config; drop --{', --'.join(given or ['config/--out'])}")
        result = fit(None, resume, resume=True, progress=progress, device=device, stop_at=stop_at, sync_bn=sync_bn,
                     compile=compile)
    else:
        flags["device"] = device
        cfg = merge(load_config_file(config) if config else None, flags)
        result = fit(cfg, out or default_run_dir(cfg), progress=progress, stop_at=stop_at, sync_bn=sync_bn,
                     compile=compile)
    if _rank():
        return   # rank 0 reports for the whole torchrun job
    acc = "n/a" if result.test_acc is None else f"{result.test_acc:.2%}"
    head = "done" if result.step >= result.total_steps else f"stopped at step {result.step}/{result.total_steps}"
    typer.echo(f"{head}: {result.run_dir} | test accuracy {acc} | step {result.step}/{result.total_steps} | "
               f"{result.elapsed_s:.0f} s | {result.images_per_s:,.0f} images/s ({result.step_mode} steps) | "
               f"{result.checkpoint}")
    if result.step < result.total_steps:
        typer.echo(f"continue with: robustkit train --resume {result.run_dir}")


def _print_configs() -> None:
    from robustkit.config import describe_config, load_config_file, shipped_configs

    shipped = shipped_configs()
    width = max(map(len, shipped), default=0)
    for name, path in shipped.items():
        typer.echo(f"{name:<{width}}  {describe_config(load_config_file(path))}")
    typer.echo("use one: robustkit train --config NAME [--dataset SPEC] [--seed S] (flags override the config)")


class _Bar:
    """One rich progress bar (stderr) behind the jobs' Progress interface."""

    def __init__(self, title: str, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, disable=not enabled)
        self.task = self.bar.add_task(title, total=None, label="")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def set_total(self, total: int) -> None:
        self.bar.update(self.task, total=total)

    def advance(self, n: int = 1, label: str | None = None) -> None:
        self.bar.update(self.task, advance=n, **({"label": label} if label else {}))

    def note(self, message: str) -> None:
        # soft_wrap: one line however long (the terminal folds it; a log file keeps it whole, for grep)
        self.bar.console.print(f"note: {message}", markup=False, highlight=False, soft_wrap=True)

    def show(self, table, files) -> None:
        """Print a result table and the files written, above the progress bar."""
        self.bar.console.print(table)
        self.bar.console.print("wrote " + ", ".join(map(str, files)), markup=False, highlight=False, soft_wrap=True)


def _parse_limit(limit: Optional[int]) -> Optional[int]:
    if limit is not None and limit < 1:
        raise RobustkitError(f"--limit must be >= 1, got {limit}")
    return limit


def _check_batch_size(batch_size: Optional[int]) -> Optional[int]:
    if batch_size is not None and batch_size < 1:
        raise RobustkitError(f"--batch-size must be >= 1, got {batch_size}")
    return batch_size


Paths = Annotated[list[str], typer.Argument(help="model sources: checkpoint files, run folders, folders holding runs "
                                                 "(searched recursively), torchvision:NAME, timm:NAME, model.pt2, "
                                                 "model.ts, python:MODULE:FUNCTION (these three only with "
                                                 "--trust-code)")]
DataSpec = Annotated[Optional[str], typer.Option("--data", help="cifar10 | stl10 | digits | folder:PATH "
                                                                "[a checkpoint's own test split]")]
CorruptDataSpec = Annotated[Optional[str], typer.Option("--data", help="cifar10 | stl10 | digits | folder:PATH | "
                                                                       "cifar10-c:PATH | imagenet-c:PATH (the released "
                                                                       "corrupted sets) [a checkpoint's own test split]")]
Weights = Annotated[Optional[Path], typer.Option(help="weights for torchvision:/timm:/python: models (.pth/.pt state "
                                                      "dict, weights_only; .safetensors)")]
NumClasses = Annotated[Optional[int], typer.Option(help="output classes of a torchvision:/timm: model [1000]")]
MeanStd = Annotated[Optional[str], typer.Option(help="comma list (1 or 3 numbers) overriding the model's normalisation")]
TrustCode = Annotated[bool, typer.Option("--trust-code", help="allow the model sources that can run code while "
                                                             "loading: python:MODULE:FUNCTION (imports it), .pt2 "
                                                             "(unpickles) and TorchScript files (runs their code)")]
Resize = Annotated[Optional[int], typer.Option(help="resize the shorter side of folder images [256 for 224-px models]")]
Crop = Annotated[Optional[int], typer.Option(help="center crop of folder images [224 for 224-px models]")]
ClassesFile = Annotated[Optional[Path], typer.Option("--classes", help="file with one class name per line: the "
                                                                         "model's output order [sorted folder names]")]
Decode = Annotated[str, typer.Option(help="decoder of folder images: cpu (Pillow + torchvision's transforms, the "
                                           "standard ImageNet evaluation, pixel for pixel) | gpu (nvJPEG on CUDA: faster, "
                                           "other pixels: mean 1.5/255 after Resize(256)+CenterCrop(224))")]
Deterministic = Annotated[bool, typer.Option("--deterministic", help="deterministic CUDA kernels (cuDNN, no TF32): "
                                                                     "with --no-amp --no-channels-last the same numbers "
                                                                     "as torchattacks bit for bit; slower")]


_NUMBERS = "comma-separated numbers, e.g. 0.485,0.456,0.406"


def _options(data, weights, num_classes, mean, std, trust_code, resize, crop, classes, decode="cpu", compile=False,
             fold_bn=None, cudnn_benchmark=None, fuse_conv=None):
    from robustkit.jobs import ModelOptions

    for flag, v in (("--num-classes", num_classes), ("--resize", resize), ("--crop", crop)):
        if v is not None and v < 1:
            raise RobustkitError(f"{flag} must be >= 1, got {v}")
    return ModelOptions(weights=str(weights) if weights else None, num_classes=num_classes,
                        mean=_comma_list(mean, "--mean", float, _NUMBERS), std=_comma_list(std, "--std", float, _NUMBERS),
                        trust_code=trust_code, data=data, resize=resize, crop=crop,
                        classes=str(classes) if classes else None, decode=decode, compile=compile, fold_bn=fold_bn,
                        cudnn_benchmark=cudnn_benchmark, fuse_conv=fuse_conv)


def _distributed(device: str, progress: bool) -> tuple[str, bool]:
    """Under torchrun: join the process group; the device of this rank; progress on rank 0 only."""
    from robustkit.distributed import init_from_env, world

    device = init_from_env(device) or device
    return device, progress and world().is_main


def _warn_random(bar, results) -> None:
    from robustkit.distributed import world

    for r in results if world().is_main else []:
        if r.get("random_weights"):
            bar.note(f"WARNING: {r.get('model_source')} was evaluated with RANDOM weights (no --weights): "
                     "these numbers say nothing about a trained model")
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
Limit = Annotated[Optional[int], typer.Option(help="evaluate N test images: the first N of a fixed shuffle of the test split")]
BatchSize = Annotated[Optional[int], typer.Option(help="images per batch [1000 on CUDA, 250 on CPU]")]
CorruptBatchSize = Annotated[Optional[int], typer.Option(help="images per batch [on CUDA 1000, or for images below 224 "
                                                              "px as many as hold 1000 x 224 x 224 pixels, at most "
                                                              "5000 (32 px: 5000); 250 on CPU]")]
DataDir = Annotated[Optional[str], typer.Option(help="where the checkpoint's torchvision dataset lives")]
Out = Annotated[Optional[Path], typer.Option(help="results folder [<run>/eval for checkpoints, eval-<model> for other "
                                                  "sources; with several models: OUT/<name>]")]
Force = Annotated[bool, typer.Option("--force", help="recompute results that are already on disk")]
Amp = Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="bf16 autocast [on for CUDA, off for CPU]")]
ChannelsLast = Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last",
                                                      help="NHWC memory layout [on for CUDA, off for CPU]")]
ShowProgress = Annotated[bool, typer.Option("--progress/--no-progress", help="show the progress bar")]
CompileEval = Annotated[bool, typer.Option("--compile/--no-compile", help="compile the network with TorchInductor "
                                                                         "(once, for the batch size; needs a C++ "
                                                                         "compiler on the CPU; falls back with a note)")]
FoldBN = Annotated[Optional[bool], typer.Option("--fold-bn/--no-fold-bn", help="fold every batch norm that directly "
                                                "follows a convolution into it before evaluating (the same numbers up "
                                                "to float rounding, so not bit for bit; on a CPU up to 1.18x faster for "
                                                "WRN-28-2 and ResNet-50; on CUDA little by itself, as torch adds the "
                                                "bias in a pass of its own (corrupt --fuse-conv removes passes); a "
                                                "model torch.fx cannot trace is evaluated as it is, with a note) [off; "
                                                "corrupt's --fuse-conv, on with CUDA, folds them too]")]
CudnnBenchmark = Annotated[Optional[bool], typer.Option("--cudnn-benchmark/--no-cudnn-benchmark",
                                                        help="let cuDNN time its convolution algorithms once per input "
                                                             "shape and keep the fastest, for the network's forward "
                                                             "only (CUDA; off under --deterministic) [off]")]
FuseConv = Annotated[Optional[bool], typer.Option("--fuse-conv/--no-fuse-conv",
                                                  help="fold the batch norms (--fold-bn), then run each convolution + "
                                                       "bias (+ residual sum) + ReLU as one cuDNN call: fewer passes "
                                                       "over the feature maps (CUDA; elsewhere the same ops as before; "
                                                       "the same numbers up to float rounding) [on with CUDA, off "
                                                       "elsewhere]")]


@app.command()
@friendly
def fgsm(
    paths: Paths,
    eps: Annotated[str, typer.Option(help="A..B (step --eps-step), a comma list, or one value; [0,1] pixel units")] = "0.05..0.25",
    eps_step: Annotated[float, typer.Option(help="step of an A..B range")] = 0.05,
    attack: Annotated[str, typer.Option(help="fgsm | pgd (L-inf, random start) | torchattacks:NAME "
                                             "(e.g. torchattacks:AutoAttack; pip install 'robustkit[torchattacks]')")] = "fgsm",
    attack_param: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE for a torchattacks attack, repeatable "
                                                                   "(e.g. --attack-param version=standard)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="PGD steps (--attack pgd only) [10]")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="PGD step size (--attack pgd only) [2.5 x eps / steps]")] = None,
    seed: Annotated[int, typer.Option(help="seed of the random start (PGD, torchattacks)")] = 0,
    limit: Limit = None, batch_size: BatchSize = None, device: Device = "auto", data_dir: DataDir = None,
    out: Out = None, force: Force = False, amp: Amp = None, channels_last: ChannelsLast = None,
    data: DataSpec = None, weights: Weights = None, num_classes: NumClasses = None, mean: MeanStd = None,
    std: MeanStd = None, trust_code: TrustCode = False, resize: Resize = None, crop: Crop = None,
    classes: ClassesFile = None, decode: Decode = "cpu", deterministic: Deterministic = False,
    progress: ShowProgress = True, compile: CompileEval = False, fold_bn: FoldBN = None,
    cudnn_benchmark: CudnnBenchmark = None,
):
    """Accuracy under FGSM (or PGD, or a torchattacks attack) over an epsilon sweep; clean accuracy (eps 0)
    always included."""
    from robustkit.attacks import parse_attack_params, parse_eps
    from robustkit.jobs import run_fgsm
    from robustkit.report import fgsm_table

    # --steps/--alpha default to None so that a given one can be told apart: only pgd takes them (run_fgsm's
    # own defaults apply when they are not given).
    pgd = {k: v for k, v in (("steps", steps), ("alpha", alpha)) if v is not None}
    if pgd and attack.strip().lower() != "pgd":
        hint = ("; a torchattacks attack that has them takes --attack-param steps=N / alpha=A"
                if attack.strip().lower().startswith("torchattacks:") else "")
        raise RobustkitError(f"--steps and --alpha are for --attack pgd; drop them for --attack {attack}{hint}")
    values = parse_eps(eps, eps_step)
    params = parse_attack_params(attack_param or [])
    device, progress = _distributed(device, progress)
    opts = _options(data, weights, num_classes, mean, std, trust_code, resize, crop, classes, decode, compile,
                    fold_bn, cudnn_benchmark)
    if deterministic:
        from robustkit.evaluate import set_deterministic

        set_deterministic()
    with _Bar(attack, progress) as bar:
        results = run_fgsm(paths, values, attack=attack, attack_params=params, **pgd, seed=seed,
                           limit=_parse_limit(limit), batch_size=_check_batch_size(batch_size), device=device,
                           data_dir=data_dir, out=out, force=force, amp=amp, channels_last=channels_last, progress=bar,
                           options=opts, on_result=lambda r, f: bar.show(fgsm_table(r), f))
        _warn_random(bar, results)


@app.command()
@friendly
def corrupt(
    paths: Paths,
    corruptions: Annotated[str, typer.Option(help="all | common | extra | comma list (e.g. fog,frost)")] = "all",
    severities: Annotated[str, typer.Option(help="1..5, a comma list, or one value")] = "1..5",
    preset: Annotated[str, typer.Option(help="imagenet-c | cifar-10-c | auto (cifar-10-c up to 64 px)")] = "auto",
    seed: Annotated[int, typer.Option(help="seed of the random corruptions")] = 0,
    storage: Annotated[str, typer.Option(help="float: evaluate the corrupted images as computed | released: store "
                                              "each one as the released files were first (8-bit truncation as "
                                              "CIFAR-10-C's .npy; for the imagenet-c preset also a JPEG at quality "
                                              "85, as ImageNet-C's files), for numbers closer to published ones")] = "float",
    limit: Limit = None, batch_size: CorruptBatchSize = None, device: Device = "auto", data_dir: DataDir = None,
    out: Out = None, force: Force = False, amp: Amp = None, channels_last: ChannelsLast = None,
    data: CorruptDataSpec = None, weights: Weights = None, num_classes: NumClasses = None, mean: MeanStd = None,
    std: MeanStd = None, trust_code: TrustCode = False, resize: Resize = None, crop: Crop = None,
    classes: ClassesFile = None, decode: Decode = "cpu", deterministic: Deterministic = False,
    progress: ShowProgress = True, compile: CompileEval = False,
    fold_bn: FoldBN = None, cudnn_benchmark: CudnnBenchmark = None, fuse_conv: FuseConv = None,
):
    """Accuracy under ImageNet-C style corruptions (19 kinds x 5 severities), generated on the device."""
    from robustkit.corruptions import PRESETS, parse_corruptions, parse_severities
    from robustkit.jobs import run_corruptions
    from robustkit.report import corruption_table

    names, sevs = parse_corruptions(corruptions), parse_severities(severities)
    if preset not in (*PRESETS, "auto"):
        raise RobustkitError(f"unknown preset {preset!r}: use {', '.join(PRESETS)} or auto")
    opts = _options(data, weights, num_classes, mean, std, trust_code, resize, crop, classes, decode, compile,
                    fold_bn, cudnn_benchmark, fuse_conv)
    if deterministic:
        from robustkit.evaluate import set_deterministic

        set_deterministic()
    device, progress = _distributed(device, progress)
    with _Bar("corruptions", progress) as bar:
        results = run_corruptions(paths, names, sevs, preset=preset, seed=seed, storage=storage, limit=_parse_limit(limit),
                                  batch_size=_check_batch_size(batch_size), device=device, data_dir=data_dir, out=out,
                                  force=force, amp=amp, channels_last=channels_last, progress=bar, options=opts,
                                  on_result=lambda r, f: bar.show(corruption_table(r), f))
        _warn_random(bar, results)


@app.command()
@friendly
def report(
    runs: Annotated[list[Path], typer.Argument(help="run folders (or folders holding runs) with eval/ results")],
    baseline: Annotated[Optional[Path], typer.Option(help="run whose corruption errors normalise CE/mCE")] = None,
    out: Annotated[Optional[Path], typer.Option(help="report folder [<common parent of the runs>/report]")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="also write one long-format CSV over all the runs (for pandas), "
                                                     "one row per evaluated cell, columns: run, model_source, method, "
                                                     "labels, seed (training), arch, dataset, kind (attack | "
                                                     "corruption), attack, eps, corruption, severity, corruption_set "
                                                     "(benchmark | extra | other), preset, eval_seed, accuracy "
                                                     "(fraction), n, clean_accuracy, source (generated | released), "
                                                     "storage (float | released)")] = None,
):
    """One paper-style table + plots over many runs: clean, each epsilon, the benchmark protocols' corruption
    numbers (15 corruptions x 5 severities; ImageNet-C mCE against AlexNet), CE/mCE against --baseline."""
    from robustkit.report import write_report

    path = write_report(runs, out_dir=out, baseline=baseline, csv=csv)
    typer.echo(path.read_text())
    typer.echo(f"wrote {path} and plots in {path.parent}" + (f"; {csv}" if csv is not None else ""))


@app.command()
@friendly
def demo(
    out: Annotated[Optional[Path], typer.Option(help="output folder [a new robustkit-demo-<time> folder here]")] = None,
    device: Device = "auto",
    steps: Annotated[int, typer.Option(help="training steps per run")] = 100,
    labels: Annotated[int, typer.Option(help="labeled digits (class-balanced)")] = 50,
    seeds: Annotated[int, typer.Option(help="seeds per method (0, 1, ...)")] = 3,
    arch: Annotated[str, typer.Option(help="architecture")] = "wrn-10-1",
    corruptions: Annotated[str, typer.Option(help="all | common | extra | comma list")] = "all",
    severities: Annotated[str, typer.Option(help="corruption severities: 1..5, a comma list, or one value")] = "1,3,5",
    amp: Amp = None, channels_last: ChannelsLast = None,
    progress: ShowProgress = True,
):
    """The whole pipeline offline on the bundled digits: baseline, GradAug and GradAug-semi x 3 seeds, then
    FGSM, corruptions and a report with mean ± std over the seeds."""
    from robustkit.demo import DemoSettings, run_demo

    if steps < 1:
        raise RobustkitError("--steps must be >= 1")
    if seeds < 1:
        raise RobustkitError("--seeds must be >= 1")
    settings = DemoSettings(steps=steps, labels=labels, seeds=tuple(range(seeds)), arch=arch, corruptions=corruptions,
                            severities=severities, device=device, amp=amp, channels_last=channels_last)
    path = run_demo(out, settings, progress=progress, make_bar=lambda title: _Bar(title, progress), echo=typer.echo)
    typer.echo(path.read_text())
    typer.echo(f"wrote {path} (plots beside it); runs and their eval/ results in {path.parent.parent / 'runs'}")


def main() -> None:
    try:
        app()
    except SystemExit as exc:   # typer ends every command with SystemExit
        from robustkit.distributed import end_process

        end_process(exc.code)   # under torchrun: a clean end of this rank (never returns); else nothing
        raise


if __name__ == "__main__":
    sys.exit(main())
