"""fit(config, run_dir): the only training loop.

Everything random in a step is drawn from generators seeded by (seed, step) (see rng.py), the learning
rate is a closed-form cosine of the step, and the optimizer state is saved with the weights: resuming
from a checkpoint continues exactly where an uninterrupted run would be.

Data stays on the device as uint8; each step gathers a batch, crops/flips it in one batched op and hands
it to the step runner (robustkit/step.py): on CUDA, in one process, GradAug/baseline/CutMix steps run as
captured CUDA graphs over fixed shapes (masked sub-networks); elsewhere the method's eager ``train_step``.
On CUDA by default, and on the CPU when asked (``amp``, ``channels_last``): bf16 autocast and the
channels_last layout. cuDNN's benchmark mode stays off while training: it would re-tune every new shape.

Under torchrun (``WORLD_SIZE`` > 1) the same loop runs in every process, as DistributedDataParallel: the
configured batch is the *global* batch, rank r takes positions [r*B/N, (r+1)*B/N) of every step's labeled
(and unlabeled) batch with the crops and flips a single process draws for them, BatchNorm statistics are
synchronised at every width (``sync_bn``, on by default), and the host-side draws (GradAug's sub-networks,
CutMix's box) come from the same (seed, step) generators on every rank. N processes thus train what one
process with the whole batch trains, up to float rounding; the config, and so the checkpoint, does not
depend on N, and a run can be resumed with any number of processes that divides the batch. Per-image
draws inside the network (ShakeDrop) and CutMix's pairing are per rank. Rank 0 alone writes files and
shows progress; every rank evaluates its share of the test batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from robustkit import __version__, checkpoint
from robustkit.config import TrainConfig, resolve, validate, write_yaml
from robustkit.data import (augment, balanced_split, batch_indices, channel_stats, default_flip, limit_indices,
                            load_dataset, parse_spec)
from robustkit.distributed import all_sum, barrier, init_from_env, launched, world
from robustkit.errors import RobustkitError, first_line, sigterm_interrupts
from robustkit.evaluate import accuracy
from robustkit.io import writable_dir, write_text
from robustkit.methods import METHODS, Batch
from robustkit.models import check_arch, create_model, has_random_layers, set_sync_batchnorm
from robustkit.rng import derive_seed, generator
from robustkit.step import choose_mode, make_step


class TrainingInterrupted(RobustkitError):
    exit_code = 130
    every_rank = False   # under torchrun every rank stops; rank 0 prints the resume command once


class PeerStopped(TrainingInterrupted):
    """Another rank of the torchrun job failed or was stopped: every survivor says so (rank 0 may be gone)."""

    every_rank = True


@dataclass
class FitResult:
    run_dir: Path
    checkpoint: Path
    step: int
    total_steps: int
    test_acc: float | None
    elapsed_s: float        # training time of the whole run (resumed parts included), evaluation not counted
    images_per_s: float     # this call's average training rate (evaluation and checkpoints not counted)
    step_mode: str = "eager"   # how the steps ran (step.py): eager, static, graphs, graphs-streams, ... (after fallbacks)


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    """Cosine decay from base_lr (step 0) towards 0 (step total), per step."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / total))


def versions() -> dict[str, str]:
    return {"robustkit": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


class _Metrics:
    """metrics.jsonl: appended line by line; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            # a line cut short (the process killed mid-append, a full disk) is dropped with the lines after the step
            keep = [ln for ln in path.read_text().splitlines()
                    if (step := _step_of(ln)) is not None and step <= resume_step]
            write_text(path, "".join(ln + "\n" for ln in keep))
        elif resume_step is None:
            write_text(path, "")

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line that is not a whole record."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    ckpt = run_dir / checkpoint.FILENAME
    if resume and run_dir.is_file():   # (the run's checkpoint file itself is taken for its folder: see fit)
        raise RobustkitError(f"cannot resume: --resume takes the run's folder, {run_dir.parent}, not a file in it")
    if resume and not ckpt.is_file():
        raise RobustkitError(f"cannot resume: {ckpt} does not exist (start the run with robustkit train --out {run_dir})")
    if not resume and ckpt.exists():
        raise RobustkitError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --out")
    if not resume and run_dir.is_dir():
        # a run that stopped before its first checkpoint is started again in place; anybody else's files are kept
        taken = [name for name in RUN_FILES if (run_dir / name).exists()]
        if taken and not _is_run_config(run_dir / "config.yaml"):
            raise RobustkitError(f"{run_dir} holds {', '.join(taken)} that are not a robustkit run's: a run would "
                                 "overwrite them; pick another --out")


RUN_FILES = ("config.yaml", "labeled_indices.json", "metrics.jsonl")   # what a run writes besides its checkpoint


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is the config.yaml of a robustkit training run (one that stopped before its first
    checkpoint leaves it behind)."""
    from robustkit.config import load_config_file

    if not path.is_file():
        return False
    try:
        data = load_config_file(path)   # YAML, a mapping, known keys: one RobustkitError otherwise
    except (OSError, RobustkitError):
        return False
    return "method" in data


def _resume_hint(run_dir: Path, last_good: int, total: int) -> str:
    """Where an interrupted run stands and how to go on."""
    if not (run_dir / checkpoint.FILENAME).is_file():
        return "no checkpoint was written yet (the first comes at the first evaluation): start the same command again"
    return (f"the checkpoint at step {last_good}/{total} in {run_dir} is whole: continue with "
            f"`robustkit train --resume {run_dir}` (also under torchrun, with any number of processes that divides "
            "the batch)")


def _short(exc: BaseException) -> str:
    """The gist of a backend's error: its first sentence without the source location."""
    import re

    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc, None))
    return text.split(". ")[0][:120]


def _collective_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank stopped (or timed out)."""
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        k in text for k in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe"))


def _buffer_sync(on: bool) -> dict:
    """DDP's per-forward broadcast of rank 0's buffers: off with synchronised BatchNorm, whose running statistics
    are the same on every rank anyway; on without it (rank 0's statistics win, as in timm's default)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    known = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers": on}


def _check_world(cfg: TrainConfig, n: int, resume: bool) -> None:
    if cfg.batch_size % n:
        # every rank finds this at once: they meet first, so that each says it before torchrun, seeing the
        # first of them exit, stops the others
        barrier()
        what = "this run's batch size" if resume else "--batch-size"
        raise RobustkitError(f"{what} {cfg.batch_size} cannot be split evenly over {n} processes: "
                             f"{'resume with a number of processes that divides it' if resume else f'give a multiple of {n}'}"
                             " (the batch size is the global batch; each process takes batch / processes)")


class _Batches:
    """This rank's batch of every step, from device-resident uint8 data: a pure function of (seed, step).

    Step s takes positions [s*B, (s+1)*B) of the seeded epoch stream of the labeled pool (and of the unlabeled
    pool, batch B x unlabeled_ratio); under torchrun rank r keeps positions [r*B/N, (r+1)*B/N) of them, with the
    crops and flips one process would draw for them (``augment(..., part=...)``).
    """

    def __init__(self, train_set, labeled_idx: torch.Tensor, unlabeled_idx: torch.Tensor | None, cfg: TrainConfig,
                 w, dev: torch.device, memory_format, views: int, state) -> None:
        self.x_lab = train_set.images[labeled_idx].to(dev)
        self.y_lab = train_set.labels[labeled_idx].to(dev)
        self.x_unl = train_set.images[unlabeled_idx].to(dev) if unlabeled_idx is not None else None
        self.cfg, self.dev, self.memory_format, self.views, self.state = cfg, dev, memory_format, views, state
        self.seed_lab, self.seed_unl = derive_seed(cfg.seed, "labeled"), derive_seed(cfg.seed, "unlabeled")
        self.u_batch = cfg.batch_size * cfg.unlabeled_ratio
        self.b_rank, self.u_rank = cfg.batch_size // w.size, self.u_batch // w.size   # this rank's share
        self.lo, self.u_lo = w.rank * self.b_rank, w.rank * self.u_rank
        self.images_per_step = cfg.batch_size + (self.u_batch if self.x_unl is not None else 0)

    def at(self, step: int) -> Batch:
        cfg, dev = self.cfg, self.dev
        dgen = generator(dev, cfg.seed, "augment", step)
        idx = batch_indices(len(self.x_lab), cfg.batch_size, self.seed_lab, step, dev)[self.lo:self.lo + self.b_rank]
        uidx = (batch_indices(len(self.x_unl), self.u_batch, self.seed_unl, step, dev)[self.u_lo:self.u_lo + self.u_rank]
                if self.x_unl is not None else None)

        def view():  # one augmentation draw of this step's labeled (and unlabeled) images (this rank's part)
            a = augment(self.x_lab[idx], dgen, flip=cfg.flip, part=(self.lo, cfg.batch_size))
            b = None if uidx is None else augment(self.x_unl[uidx], dgen, flip=cfg.flip, part=(self.u_lo, self.u_batch))
            return (a.contiguous(memory_format=self.memory_format),
                    None if b is None else b.contiguous(memory_format=self.memory_format))

        x, xu = view()
        x2, xu2 = view() if self.views > 1 else (None, None)
        return Batch(x, self.y_lab[idx], xu, x2, xu2, step=step, total_steps=cfg.steps, state=self.state)


class _BatchesAhead:
    """:class:`_Batches` with step s+1's batch made on a side CUDA stream while step s runs.

    A batch is a few dozen small kernels (indices, crops, flips, the layout change), which on the step's stream
    run between two steps' graphs with the GPU idle around them; on a stream of their own they overlap the step
    before. Every batch is made on the side stream (the first too, then waited for), so the data path's memory
    (the epoch permutations cached on the device, the batch tensors) is ordered on that one stream; the step's
    stream waits for a batch's event before reading it, and each of its tensors is recorded as used there, so
    the allocator does not hand its memory back to the side stream before the step is done with it. The batches
    are the same tensors the same kernels make in order: training is unchanged, only when the kernels run.
    """

    def __init__(self, batches: _Batches):
        self.batches, self.dev = batches, batches.dev
        self.side = torch.cuda.Stream(self.dev)
        self.side.wait_stream(torch.cuda.current_stream(self.dev))   # the resident data, copied in by the setup
        self.ahead: tuple[int, Batch, torch.cuda.Event] | None = None

    @property
    def images_per_step(self) -> int:
        return self.batches.images_per_step

    def _make(self, step: int) -> tuple[int, Batch, torch.cuda.Event]:
        with torch.cuda.stream(self.side):
            batch = self.batches.at(step)
            made = torch.cuda.Event()
            made.record(self.side)
        return step, batch, made

    def at(self, step: int) -> Batch:
        ahead = self.ahead if self.ahead is not None and self.ahead[0] == step else self._make(step)
        _, batch, made = ahead
        main = torch.cuda.current_stream(self.dev)
        main.wait_event(made)
        for t in (batch.x, batch.y, batch.xu, batch.x2, batch.xu2):
            if t is not None:
                t.record_stream(main)
        # queued before this step's work: it runs beside it
        self.ahead = self._make(step + 1) if step + 1 < self.batches.cfg.steps else None
        return batch


def fit(cfg: TrainConfig | None, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
        stop_at: int | None = None, device: str | None = None, sync_bn: bool | None = None,
        compile: bool | None = None, step_mode: str | None = None, prefetch: bool | None = None) -> FitResult:
    """Train according to ``cfg`` into ``run_dir`` (or continue the run there when ``resume``).

    ``stop_at``: stop after that step with a checkpoint (chunked jobs, tests). ``device`` overrides
    the config's device (useful with ``resume``). ``sync_bn``: synchronise BatchNorm statistics across the
    processes of a torchrun launch (default: on when there is more than one). ``compile``: fixed-shape steps,
    captured as CUDA graphs on CUDA (default there; TorchInductor-compiled too for runs long enough to pay for the
    compilation) or TorchInductor-compiled on the CPU (see step.choose_mode; True asks for them and notes why not
    when they cannot run; False: eager steps). ``step_mode`` forces one of step.py's modes ("eager", "static",
    "graphs", "graphs-inductor", ...: tests, benchmarks). ``prefetch`` (CUDA; default on there): each step's batch
    is made on a side stream while the step before runs (:class:`_BatchesAhead`; 1-2% faster per step on an H100,
    2026-11-27, in all six pairs measured). Returns a :class:`FitResult`.

    The loop itself: per step the batch and one optimizer step on the device (:meth:`_Run.step`); every
    ``log_every`` steps the one host sync (:meth:`_Window.close`) and a metrics line; every ``eval_every`` steps
    (and at the end, and at ``stop_at``) the test accuracy and a checkpoint. Setting up (config, data, model,
    optimizer, resumed state, the step runner) is :meth:`_Run.open`.
    """
    if stop_at is not None and stop_at < 1:
        raise RobustkitError(f"--stop-at must be >= 1, got {stop_at}")
    run_dir = Path(run_dir)
    if resume and run_dir.name == checkpoint.FILENAME and run_dir.is_file():
        run_dir = run_dir.parent   # the run's checkpoint file names its run
    run = _Run.open(cfg, run_dir, resume=resume, device=device, sync_bn=sync_bn, compile=compile,
                    step_mode=step_mode, stop_at=stop_at)
    if prefetch is not False and run.dev.type == "cuda":
        run.batches = _BatchesAhead(run.batches)
    cfg, total = run.cfg, run.cfg.steps
    window = _Window(run)
    last_good, test_acc = run.start, None
    try:
        # (under torchrun a rank that stops ignores SIGTERM from then on: it says where the run stands, then exits)
        with sigterm_interrupts(ignore_after_an_error=run.world.size > 1), _progress(progress and run.main) as bar:
            task = bar.add_task(f"{cfg.method_label} {run.run_dir.name}", total=total, completed=run.start, info="")
            for step in range(run.start, total):
                lr = cosine_lr(cfg.lr, step, total)
                window.add(run.step(step, lr))
                done = step + 1
                evaluate = done % cfg.eval_every == 0 or done == total or done == stop_at
                if done % cfg.log_every == 0 or evaluate:
                    record = window.close(done, lr, last_good)
                    if evaluate:
                        test_acc = record["test_acc"] = run.test_accuracy()
                        run.history.append(record)
                    run.log(record)
                    bar.update(task, completed=done, info=_info(record, test_acc))
                    if evaluate:
                        run.save(done, finished=done == total)
                        last_good = done
                    window.reopen()   # evaluation and checkpoint time are not training time
                else:
                    bar.update(task, completed=done)
                if done == stop_at:
                    break
    except KeyboardInterrupt:
        # Keep what is done: checkpoints are only written at completed evaluation points, so the last one is whole.
        raise TrainingInterrupted(f"interrupted; {_resume_hint(run.run_dir, last_good, total)}") from None
    except RuntimeError as exc:
        if run.world.size == 1 or not _collective_failed(exc):
            raise
        raise PeerStopped(f"another process of this torchrun job stopped or timed out ({_short(exc)}); "
                          f"{_resume_hint(run.run_dir, last_good, total)}") from None
    return FitResult(run_dir=run.run_dir, checkpoint=run.run_dir / checkpoint.FILENAME, step=last_good,
                     total_steps=total, test_acc=test_acc, elapsed_s=run.elapsed,
                     images_per_s=window.total_images / max(window.total_seconds, 1e-9), step_mode=run.run_step.mode)


def _info(record: dict, test_acc: float | None) -> str:
    """The progress bar's text at a log point."""
    info = f"loss {record['train_loss']:.3f} acc {record['train_acc']:.1%} {record['images_per_s']:,.0f} img/s"
    return info if test_acc is None else info + f" test {test_acc:.1%}"


class _Window:
    """The training loss and accuracy between two log points, summed on the device (no host sync per step);
    :meth:`close` is the loop's one host sync: the finite-loss check and the metrics line's figures."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.loss = torch.zeros((), device=run.dev)
        self.correct = torch.zeros((), device=run.dev, dtype=torch.long)
        self.last_ips = 0.0
        self.total_images, self.total_seconds = 0, 0.0   # over every window of this call: the run's average rate
        self.reopen()

    def reopen(self) -> None:
        self.loss.zero_(), self.correct.zero_()
        self.steps, self.images, self.started = 0, 0, time.perf_counter()

    def add(self, logs: dict) -> None:
        self.loss += logs["loss"]
        self.correct += logs["correct"]
        self.steps += 1
        self.images += self.run.batches.images_per_step

    def close(self, done: int, lr: float, last_good: int) -> dict:
        """The window's metrics record (under torchrun over all ranks' sums, so every rank takes the same
        decision); raises if the loss became non-finite, naming the last good checkpoint."""
        run, n = self.run, self.run.world.size
        all_sum(self.loss), all_sum(self.correct)
        loss_mean = (self.loss / (self.steps * n)).item()
        if not math.isfinite(loss_mean):
            kept = (f"the last good checkpoint (step {last_good}) in {run.run_dir} is kept"
                    if (run.run_dir / checkpoint.FILENAME).is_file() else
                    "no checkpoint was written before it (the first comes at the first evaluation): start the run "
                    "again")
            raise RobustkitError(f"the loss became non-finite ({loss_mean}) between steps {done - self.steps + 1} "
                                 f"and {done}: lower --lr (now {run.cfg.lr}); {kept}")
        seconds = time.perf_counter() - self.started
        run.elapsed += seconds
        self.last_ips = self.images / max(seconds, 1e-9)
        self.total_images += self.images
        self.total_seconds += seconds
        return {"step": done, "lr": lr, "train_loss": loss_mean,
                "train_acc": self.correct.item() / (self.steps * run.cfg.batch_size),
                "images_per_s": self.last_ips, "elapsed_s": run.elapsed, "processes": n,
                "step_mode": run.run_step.mode, "prefetch": isinstance(run.batches, _BatchesAhead)}


@dataclass(eq=False)
class _Run:
    """Everything a training run holds between steps: what :meth:`open` set up, and what a checkpoint saves."""

    cfg: TrainConfig
    run_dir: Path
    dev: torch.device
    world: object
    sync_bn: bool
    data: dict                     # the checkpoint's description of the dataset
    classes: list
    mean: tuple
    std: tuple
    arch_kwargs: dict
    labeled_idx: torch.Tensor
    model: torch.nn.Module
    state: torch.nn.Module | None  # a method's extra module (Mean Teacher's teacher)
    optimizer: torch.optim.Optimizer
    spec: object                   # the method (methods.METHODS)
    batches: _Batches
    x_test: torch.Tensor
    y_test: torch.Tensor
    autocast: object
    channels_last: bool
    run_step: object               # step.make_step's runner
    random_layers: bool            # the model draws inside (ShakeDrop): a per-step generator on the device
    metrics: _Metrics | None       # rank 0 only
    start: int = 0
    elapsed: float = 0.0
    history: list = dataclasses.field(default_factory=list)   # the evaluation records, saved with the weights

    @property
    def main(self) -> bool:
        return self.world.is_main

    def step(self, step: int, lr: float) -> dict:
        """Step ``step``'s batch and one optimizer step on it (zero grads, forward/backward, update).

        Host-side draws (the method's plan: sub-network widths, ...) come from a CPU generator and stay Python
        numbers; per-image draws (crops, flips, ...) from one on the device. Nothing waits for the device: no
        .item(), no host-to-device copy (indices are cached there)."""
        gen = generator("cpu", self.cfg.seed, "train", step)
        batch = self.batches.at(step)
        per_rank = ("rank", self.world.rank) if self.world.size > 1 else ()   # per-image draws differ per rank
        model_gen = generator(self.dev, self.cfg.seed, "model", step, *per_rank) if self.random_layers else None
        return self.run_step(batch, gen, lr, model_gen)

    def test_accuracy(self) -> float:
        evaluated = self.spec.eval_module(self.model, self.state, self.cfg) if self.spec.eval_module else self.model
        return accuracy(evaluated, self.x_test, self.y_test, self.cfg.eval_batch_size, self.autocast, self.channels_last)

    def log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.append(record)

    def save(self, step: int, finished: bool) -> None:
        """The checkpoint after ``step`` (rank 0 writes it; atomic: temp file, then rename)."""
        if not self.main:
            return
        cfg = self.cfg
        checkpoint.save(self.run_dir / checkpoint.FILENAME, {
            "model": self.model.state_dict(), "arch": cfg.arch, "arch_kwargs": self.arch_kwargs,
            "config": cfg.to_dict(), "dataset": self.data,
            "classes": self.classes, "mean": list(self.mean), "std": list(self.std),
            "labeled_indices": self.labeled_idx, "step": step, "total_steps": cfg.steps,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": "cosine", "base_lr": cfg.lr, "total_steps": cfg.steps, "step": step},
            "rng": {"scheme": "derived per (seed, step)", "seed": cfg.seed, "torch_cpu": torch.get_rng_state()},
            "metrics": self.history, "versions": versions(), "finished": finished, "elapsed_s": self.elapsed,
            "step_state": self.run_step.state_dict(),   # the step runner's own (the -fp16 modes' loss scale)
            "distributed": {"processes": self.world.size, "sync_bn": self.sync_bn},
            **({"method_state": {"teacher": self.state.state_dict()},
                "eval_weights": "model" if cfg.eval_model == "student" else "teacher"} if self.state is not None else {}),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    @classmethod
    def open(cls, cfg: TrainConfig | None, run_dir: Path, *, resume: bool, device: str | None, sync_bn: bool | None,
             compile: bool | None, step_mode: str | None, stop_at: int | None = None) -> _Run:
        """Config (the checkpoint's when resuming), data and the labeled subset, model, optimizer, the resumed
        state, the run folder's files, and the step runner: everything checked before anything is written."""
        _check_run_dir(run_dir, resume)
        saved = None
        if resume:
            saved = checkpoint.read(run_dir / checkpoint.FILENAME, keys=checkpoint.RESUME_KEYS)
            cfg = TrainConfig.from_dict(saved["config"], source=str(run_dir / checkpoint.FILENAME))
        assert cfg is not None
        if device is not None:
            cfg = dataclasses.replace(cfg, device=device)
        validate(cfg)
        check_arch(cfg.arch)
        data_spec = parse_spec(cfg.dataset)
        dev = checkpoint.resolve_device(init_from_env(cfg.device) if launched() else cfg.device)  # joins torchrun's group
        w = world()
        if sync_bn and w.size == 1:
            raise RobustkitError("--sync-bn synchronises BatchNorm across the processes of a torchrun launch and this is "
                                 "one process: drop --sync-bn, or start with `torchrun --nproc-per-node N -m robustkit "
                                 "train ...`")
        sync_bn = w.size > 1 if sync_bn is None else sync_bn
        _check_world(cfg, w.size, resume)   # before any data is read (resolve keeps the batch size)

        # data: the class-balanced labeled subset (and the unlabeled rest when the method uses it)
        train_set = load_dataset(data_spec, "train", cfg.data_dir)
        test_set = load_dataset(data_spec, "test", cfg.data_dir)
        num_classes = len(train_set.classes)
        labeled_idx, unlabeled_idx = balanced_split(train_set.labels, cfg.labels, num_classes, cfg.seed)
        spec = METHODS[cfg.method]
        uses_unlabeled = spec.uses_unlabeled(cfg)
        if uses_unlabeled and len(unlabeled_idx) == 0:
            what = "--semi" if cfg.semi else f"--method {cfg.method}"
            raise RobustkitError(f"{what} needs unlabeled images: give --labels smaller than the training split")
        cfg = resolve(cfg, n_labeled=len(labeled_idx), n_train=len(train_set.labels),
                      image_size=int(train_set.images.shape[-1]), flip_default=default_flip(data_spec))
        check_arch(cfg.arch)  # resolve may have changed it (--method shakedrop -> wrn-D-K-shakedrop)
        if saved is not None and not torch.equal(saved["labeled_indices"], labeled_idx):
            raise RobustkitError(f"the data of {cfg.dataset} changed since this run started (labeled subset differs): "
                                 "cannot resume")
        mean, std = (tuple(saved["mean"]), tuple(saved["std"])) if saved else channel_stats(train_set.images)

        # model and optimizer (and, when resuming, their saved state)
        arch_kwargs = {"num_classes": num_classes, "mean": list(mean), "std": list(std)}
        with torch.random.fork_rng(devices=[]):  # same seed -> same initial weights; global RNG untouched
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            model = create_model(cfg.arch, **arch_kwargs)
        model.to(dev)
        cuda = dev.type == "cuda"
        channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = False   # GradAug's sliced sub-networks change shape every step
        set_sync_batchnorm(model, sync_bn)
        state = spec.make_state(model, cfg) if spec.make_state else None  # e.g. Mean Teacher's teacher
        if state is not None:
            set_sync_batchnorm(state, sync_bn)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        start, elapsed, history = 0, 0.0, []
        if saved is not None:
            try:
                model.load_state_dict(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
                if state is not None:
                    state.load_state_dict((saved.get("method_state") or {})["teacher"])
            except (RuntimeError, KeyError, ValueError, TypeError) as e:   # weights or state of another shape
                raise RobustkitError(f"{run_dir / checkpoint.FILENAME} is a damaged robustkit checkpoint: its saved "
                                     f"state does not fit the run it describes ({type(e).__name__}: "
                                     f"{first_line(e)}): cannot resume") from None
            start, elapsed, history = int(saved["step"]), float(saved.get("elapsed_s", 0.0)), list(saved["metrics"])
            if start >= cfg.steps:
                raise RobustkitError(f"{run_dir} is already finished ({start}/{cfg.steps} steps): nothing to resume")
            if stop_at is not None and stop_at <= start:
                raise RobustkitError(f"--stop-at {stop_at}: {run_dir} is already at step {start}/{cfg.steps}; give a "
                                     "later step, or leave --stop-at out to finish the run")
        barrier()  # every rank has checked the run folder before rank 0 writes into it
        net = model  # what the training step calls: the model itself, or its DDP wrapper under torchrun
        if w.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dev.index] if cuda else None, **_buffer_sync(not sync_bn))
        metrics = None
        if w.is_main:
            writable_dir(run_dir, "--out" if saved is None else "--resume")
            write_text(run_dir / "config.yaml", write_yaml(cfg))
            write_text(run_dir / "labeled_indices.json", json.dumps(labeled_idx.tolist()) + "\n")
            metrics = _Metrics(run_dir / "metrics.jsonl", start if saved is not None else None)

        # the batches, the test set, and the step runner (step.py: eager, static or captured)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        batches = _Batches(train_set, labeled_idx, unlabeled_idx if uses_unlabeled else None, cfg, w, dev,
                           memory_format, views=spec.views, state=state)
        test_idx = limit_indices(len(test_set.labels), cfg.eval_limit)   # a fixed shuffled subset, not the first N
        x_test, y_test = ((test_set.images, test_set.labels) if test_idx is None
                          else (test_set.images[test_idx], test_set.labels[test_idx]))
        random_layers = has_random_layers(model)
        amp = cfg.amp if cfg.amp is not None else cuda
        autocast = functools.partial(torch.autocast, dev.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext
        steps_here = min(cfg.steps, stop_at or cfg.steps) - start   # what this process will run
        mode, why = choose_mode(compile, cfg.method, dev, w.size, random_layers=random_layers, steps=steps_here)
        if step_mode is not None:
            mode, why = step_mode, None   # (forced: tests, benchmarks; nothing to say about the default's choice)
        if why and w.is_main:
            _note(why)
        run_step = make_step(mode, model=model, net=net, optimizer=optimizer, cfg=cfg, spec=spec, autocast=autocast,
                             amp=amp, memory_format=memory_format, num_classes=num_classes,
                             note=_note if w.is_main else None)
        if saved is not None:
            run_step.load_state_dict(saved.get("step_state") or {})
        data = {"spec": data_spec.canonical, "data_dir": cfg.data_dir, "image_size": list(train_set.images.shape[-2:]),
                "num_classes": num_classes, "n_train": len(train_set.labels), "n_test": len(test_set.labels)}
        return cls(cfg=cfg, run_dir=run_dir, dev=dev, world=w, sync_bn=sync_bn, data=data,
                   classes=list(train_set.classes), mean=mean, std=std, arch_kwargs=arch_kwargs,
                   labeled_idx=labeled_idx, model=model, state=state, optimizer=optimizer, spec=spec,
                   batches=batches, x_test=x_test.to(dev), y_test=y_test.to(dev), autocast=autocast,
                   channels_last=channels_last, run_step=run_step, random_layers=random_layers, metrics=metrics,
                   start=start, elapsed=elapsed, history=history)


def _note(message: str) -> None:
    import sys

    print(f"note: {message}", file=sys.stderr, flush=True)
