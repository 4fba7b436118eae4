"""One optimizer step on the device: what ``train.fit`` calls once per step, its capture and its fallback.

The ways to run a step, chosen once per run by :func:`choose_mode`:

* ``eager``: the method's own ``train_step`` (sub-networks sliced to their width: the fewest FLOPs), then
  ``optimizer.step()`` and the method's ``after_step``. The default on the CPU and under torchrun (DDP),
  and the only way for ShakeDrop and Mean Teacher.
* ``static``: the same step with fixed tensor shapes. Sub-networks keep full-size tensors and zero the
  channels beyond ``round(w * C)`` with per-step channel masks (``models.width.ChannelMasks``); the
  per-step numbers (learning rate, CutMix's lambda, the masks) live in device tensors that are *filled*
  before the step (a fill is a kernel with the value as its argument: no host-to-device copy, no host
  sync); gradients are summed into fixed buffers and the update is torch's fused (or foreach) SGD. It
  computes what ``eager`` computes, up to float rounding (tests/test_step.py measures how close).
* ``graphs`` (CUDA): ``static`` with each part captured once as a CUDA graph and replayed every step:
  the full network (forward, loss, backward), one sub-network pass per slot (the k-th sub-network of a step)
  and input resolution, and the SGD update. A GradAug step with n sub-networks replays n + 2 graphs; the ~2,000 kernels of a WRN-28-2 step
  cost one launch each no more, and cuDNN never re-tunes for a new shape.
* ``graphs-inductor`` (CUDA; ``static-inductor`` uncaptured: what ``--compile`` gives on the CPU): the same
  parts with the model's forward and backward compiled by ``torch.compile`` (TorchInductor, no cudagraphs of
  its own), so BatchNorm, the channel mask, ReLU and the residual sums fuse into fewer, larger kernels; then
  captured as in ``graphs``. One compilation per input resolution and masked/unmasked pass, paid at the first
  step (seconds to a minute). A compilation that fails (no C++ compiler or Triton) gives one note and the
  step goes on uncompiled.
* ``graphs-streams`` (and ``graphs-inductor-streams``): the sub-networks' graphs replayed side by side, one
  CUDA stream each, between the full pass and the update. A WRN-28-2 pass on 128 CIFAR images keeps an
  H100 far from busy, so independent passes can overlap. Each sub-network slot has its own masks, gradient
  buffers, memory pool and stream (library workspaces are per stream), and the update adds the slots'
  gradients in slot order: the same sums as in sequence.

* ``static-fp16``, ``graphs-fp16``, ``graphs-streams-fp16`` (and with TorchInductor, ``static-inductor-fp16``,
  ``graphs-inductor-fp16``; not chosen by any flag yet: ``fit(step_mode=...)``,
  ``bench/bench_train.py --variants``): float16 autocast instead of bfloat16, with dynamic loss scaling on the
  device (what torch.amp.GradScaler does, without its host syncs, so it is captured). Why: torch runs batch norm
  on float16 inputs with cuDNN's kernels and on bfloat16 ones with its own channels_last kernels, which took 0.95
  of the baseline's 3.3 ms of kernels on an H100. Measured by ``bench/gpu_check.sh quick-fp16`` (2026-11-27): the
  baseline 3.36 vs 3.58 ms, GradAug slower (9.52 vs 9.35), compiled no gain (3.01 vs 2.99): no default. The loss scale
  and its count of clean steps are saved in checkpoints (``state_dict``), so a resumed run equals an
  uninterrupted one.

``graphs-streams`` is the CUDA default for GradAug (it was 1.36x faster per step on an H100, nothing up front);
the ``-inductor`` modes are what ``--compile`` asks for on CUDA (faster per step, a compilation up front), and
the CUDA default for runs of :data:`COMPILE_PAYS_AFTER_STEPS` steps or more, where the compilation pays. The
figures: ``bench/RESULTS.md``, measured by ``bench/gpu_check.sh quick-step``.

GradAug + CutMix and CutMix alone fit the fixed shapes too: the box is pasted outside the graph and the
loss is ``lam * CE(y) + (1 - lam) * CE(y[perm])`` with ``lam`` in a device tensor (1 and 0 when a batch is
not mixed, which is exactly plain cross-entropy).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.compiling import compile_fixed_shapes
from robustkit.errors import first_line
from robustkit.methods import TRAIN_STEPS, Batch, cutmix
from robustkit.methods.gradaug import kl_to_target, resize, sample_subnets
from robustkit.models import ChannelMasks, has_random_layers, masked, set_generator

STATIC_METHODS = ("baseline", "cutmix", "gradaug")   # methods with a static (capturable) step
STATIC_MODES = ("static", "static-inductor", "graphs", "graphs-untuned", "graphs-inductor", "graphs-streams",
                "graphs-inductor-streams", "static-fp16", "graphs-fp16", "graphs-streams-fp16", "static-inductor-fp16",
                "graphs-inductor-fp16")
# Dynamic loss scaling of the -fp16 modes: torch.amp.GradScaler's defaults
FP16_INIT_SCALE, FP16_GROWTH_FACTOR, FP16_BACKOFF_FACTOR, FP16_GROWTH_INTERVAL = 2.0**16, 2.0, 0.5, 2000
# On CUDA a run of at least this many steps (in one process) compiles its step by default: TorchInductor's
# 23-68 s up front paid back by 0.6-1.5 ms per step (WRN-28-2 on an H100, 2026-11-27; see choose_mode)
COMPILE_PAYS_AFTER_STEPS = 50_000


def choose_mode(requested: bool | None, method: str, device: torch.device, processes: int,
                random_layers: bool = False, steps: int | None = None) -> tuple[str, str | None]:
    """The step mode of a run and a line to say about it: why a request for compiled steps cannot be honoured,
    or that the default compiles (None: nothing to say).

    ``requested``: True (``--compile``), False (``--no-compile``) or None (default: on where it pays). On CUDA
    the default is captured graphs, for GradAug with the sub-networks side by side (``graphs-streams``: 9.3 ms
    per WRN-28-2 step of 128 images on an H100 against 12.7 ms one after another, 2026-11-26), and for a run of
    ``steps`` >= :data:`COMPILE_PAYS_AFTER_STEPS` in this process the same with TorchInductor
    (``graphs-inductor[-streams]``, what ``--compile`` asks for: 7.9 ms for GradAug against 9.4, 2.93-2.99 ms for
    the baseline against 3.5-3.6, after 23 s (baseline) to 68 s (GradAug) of compilation in a fresh process on an
    H100, 2026-11-27: it pays for runs longer than ~38,000 (baseline) or ~47,000 (GradAug) steps, or sooner
    once TorchInductor's on-disk cache holds it). On the CPU ``--compile`` asks for the TorchInductor-compiled
    static step (``static-inductor``: 1.3x faster for GradAug and baseline WRN-16-2 on 2 cores, after about a
    minute of compilation, which is why it is not the CPU default).
    ``random_layers``: the model draws randomness of its own in training (ShakeDrop, e.g. ``--method gradaug
    --arch wrn-28-2-shakedrop``), from a per-step generator the static step does not serve.
    """
    if requested is False:
        return "eager", None
    cuda = device.type == "cuda"
    if not cuda and not requested:
        return "eager", None
    kind = "captured" if cuda else "compiled"
    why = None
    if processes > 1:
        why = "not under torchrun (DistributedDataParallel runs its own gradient hooks)"
    elif method not in STATIC_METHODS:
        why = f"no {kind} step for --method {method} yet"
    elif random_layers:
        why = f"no {kind} step for a model with ShakeDrop layers (their per-image draws come from a per-step generator)"
    elif cuda and (not hasattr(torch.cuda, "CUDAGraph") or not hasattr(torch.cuda, "graph")):
        why = f"this torch ({torch.__version__}) has no CUDA graphs"
    if why is None:
        if not cuda:
            return "static-inductor", None
        auto = requested is None and steps is not None and steps >= COMPILE_PAYS_AFTER_STEPS
        mode = "graphs-inductor" if requested or auto else "graphs"
        said = (f"compiling the step with TorchInductor for this run's {steps:,} steps (~20 s to a minute now, "
                "then ~15% faster per step); --no-compile trains with eager steps instead" if auto else None)
        return (mode + "-streams" if method == "gradaug" else mode), said
    return "eager", (f"--compile: {why}; training with eager steps" if requested else None)


class EagerStep:
    """The method's ``train_step`` + ``optimizer.step()`` + ``after_step``, as written in ``methods/``."""

    mode = "eager"

    def __init__(self, model: nn.Module, net: nn.Module, optimizer: torch.optim.Optimizer, cfg, spec, autocast):
        self.model, self.net, self.optimizer, self.cfg, self.spec, self.autocast = model, net, optimizer, cfg, spec, autocast

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the runner itself: nothing (see :meth:`StaticStep.state_dict`)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __call__(self, batch: Batch, gen: torch.Generator, lr: float, model_gen: torch.Generator | None = None) -> dict:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if model_gen is not None:
            set_generator(self.model, model_gen)  # ShakeDrop's per-image draws (fit gives one where there are any)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logs = TRAIN_STEPS[self.cfg.method](self.net, batch, self.cfg, gen, self.autocast)
        self.optimizer.step()
        if self.spec.after_step is not None:
            self.spec.after_step(self.model, batch.state, self.cfg, batch.step)
        return logs


class StaticStep:
    """Fixed-shape GradAug / baseline / CutMix step; with ``capture`` (CUDA), replayed from CUDA graphs.

    Each part of the step is a method that reads and writes only the tensors allocated here (inputs,
    gradient sums, soft targets, logs), so it can be captured once and replayed with new contents.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg, *, num_classes: int, amp: bool,
                 memory_format, capture: bool, tune: bool = True, inductor: bool = False, streams: bool = False,
                 half: bool = False, note: Callable[[str], None] | None = None):
        if len(optimizer.param_groups) != 1:
            raise ValueError("StaticStep expects one parameter group")
        if streams and not capture:
            raise ValueError("parallel sub-network streams need captured graphs (a graphs-* mode)")
        if has_random_layers(model):
            raise ValueError("static steps do not serve ShakeDrop's per-step generator: use the eager step")
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.capture = capture
        self.tune = tune    # cuDNN benchmark while the (fixed) shapes are warmed up and captured
        # the module the passes call: the model itself, or its TorchInductor-compiled twin (same parameters)
        self.net = compile_fixed_shapes(model, len(cfg.resolutions or ()) + 1) if inductor else model
        self.num_classes = num_classes
        self.note = note or (lambda message: None)
        dev = next(model.parameters()).device
        self.device = dev
        self.amp = amp or half
        # half: float16 autocast (not bfloat16) with dynamic loss scaling on the device, as torch.amp.GradScaler
        # does it: the losses are multiplied by ``scale`` before the backward passes, the summed gradients are
        # unscaled and checked for inf/NaN (``found_inf``), the fused SGD skips an update that found one, and the
        # scale is halved there, doubled after ``growth_interval`` clean steps. No host sync, so it is captured.
        # (float16 is why: cuDNN's batch norm takes float16 inputs with float32 weights, not bfloat16 ones, and
        # torch then runs its own slower channels_last kernels; measured: bench/RESULTS.md)
        self.half = half
        self.scale = torch.full((), float(FP16_INIT_SCALE), device=dev)
        self.inv_scale = torch.ones((), device=dev)
        self.growth = torch.zeros((), dtype=torch.int32, device=dev)
        self.found_inf = torch.zeros((), device=dev)
        self.growth_interval = FP16_GROWTH_INTERVAL
        self.memory_format = memory_format
        self.subnets = cfg.subnets if cfg.method == "gradaug" else 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grads = [torch.zeros_like(p) for p in self.params]
        group = optimizer.param_groups[0]
        self.sgd_options = dict(weight_decay=group["weight_decay"], momentum=group["momentum"],
                                dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
        # fused SGD takes the learning rate as a device tensor (what a captured update needs)
        self.fused = dev.type == "cuda"
        self.lr = torch.zeros((), device=dev)
        self.lam = torch.ones((), device=dev)      # CutMix: weight of the true labels ...
        self.lam2 = torch.zeros((), device=dev)    # ... and of the pasted images' labels (1 - lam, from the host)
        # sub-network k of a step runs in slot k: its own channel masks, gradient buffers and KL, so the slots'
        # passes are independent of each other (they can run side by side: ``streams``); the update adds them
        # to the full pass's gradients in slot order, as a sequential accumulation would
        self.masks = [ChannelMasks(model) for _ in range(self.subnets)]
        self.sub_grads = [[torch.zeros_like(p) for p in self.params] for _ in range(self.subnets)]
        self.sub_kl = [torch.zeros((), device=dev) for _ in range(self.subnets)]
        self.streams = [torch.cuda.Stream(dev) for _ in range(self.subnets)] if streams and self.subnets else None
        self.x = self.y = self.y2 = self.target = None    # allocated at the first step (batch shapes)
        self.ce = torch.zeros((), device=dev)
        self.kl = torch.zeros((), device=dev)
        self.loss = torch.zeros((), device=dev)
        self.correct = torch.zeros((), dtype=torch.long, device=dev)
        self.graphs: dict[object, torch.cuda.CUDAGraph] = {}
        self.captured = False

    @property
    def mode(self) -> str:
        """The mode this runner is in now (a failed capture or compilation changes it): static/graphs, then
        -untuned, -inductor, -streams where they apply."""
        name = "graphs" if self.capture else "static"
        if self.capture and not self.tune:
            name += "-untuned"
        if self.net is not self.model:
            name += "-inductor"
        if self.capture and self.streams:
            name += "-streams"
        if self.half:
            name += "-fp16"
        return name

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the runner itself: the -fp16 modes' loss scale and its count of clean steps
        (so that a resumed run scales as the uninterrupted one would); nothing for the others."""
        if not self.half:
            return {}
        return {"loss_scale": float(self.scale), "loss_scale_clean_steps": int(self.growth)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (filled in place: a captured graph reads the same tensors); a state from
        another mode (no loss scale) leaves the defaults."""
        if self.half and "loss_scale" in state:
            self.scale.fill_(float(state["loss_scale"]))
            self.growth.fill_(int(state["loss_scale_clean_steps"]))

    # -- the parts of a step (each captured as one graph) -------------------------------------------------

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model on ``x``; compiled where asked, and the model itself when the compilation fails (it fails
        before the compiled pass runs, so nothing was changed yet)."""
        if self.net is self.model:
            return self.model(x)
        try:
            with _backward_compiled_with_forward():
                return self.net(x)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:   # torch._dynamo / inductor errors have no common public base class
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise   # a pass that needs compiling during a capture: the capture fails (and says so), not this
            self.net = self.model
            first = first_line(exc)
            self.note(f"torch.compile failed ({type(exc).__name__}: {first}); training goes on without the "
                      "compiled passes (same results)")
            return self.model(x)

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.half else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """What the backward pass starts from: ``loss``, times the loss scale in the -fp16 modes."""
        return loss * self.scale if self.half else loss

    def _unscale(self) -> None:
        """-fp16: the summed gradients divided by the scale; ``found_inf`` 1 where one is inf or NaN."""
        torch.reciprocal(self.scale, out=self.inv_scale)
        self.found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(self.grads, self.found_inf, self.inv_scale)

    def _update_scale(self) -> None:
        torch._amp_update_scale_(self.scale, self.growth, self.found_inf, FP16_GROWTH_FACTOR, FP16_BACKOFF_FACTOR,
                                 self.growth_interval)

    def _full(self) -> None:
        """Full network on labeled (+ unlabeled) images: CE on the labeled part; gradients -> the sums."""
        b = self.y.numel()
        with self._autocast():
            logits = self._forward(self.x)
        lab = logits[:b].float()
        ce = self.lam * F.cross_entropy(lab, self.y) + self.lam2 * F.cross_entropy(lab, self.y2)
        grads = torch.autograd.grad(self._scaled(ce), self.params)
        torch._foreach_copy_(self.grads, grads)
        if self.subnets:
            self.target.copy_(F.softmax(logits.detach().float(), dim=1))
        self.ce.copy_(ce.detach())
        self.kl.zero_()
        self.correct.copy_((lab.detach().argmax(1) == self.y).sum())

    def _sub(self, slot: int, resolution: int) -> None:
        """Sub-network ``slot`` (masked to the width its masks hold) at ``resolution``: KL to the targets, its
        gradients and KL into the slot's own buffers."""
        with masked(self.model, self.masks[slot]), self._autocast():
            logits = self._forward(resize(self.x, resolution))
        kl = kl_to_target(logits, self.target)
        grads = torch.autograd.grad(self._scaled(kl), self.params)
        torch._foreach_copy_(self.sub_grads[slot], grads)
        self.sub_kl[slot].copy_(kl.detach())

    def _collect(self) -> None:
        """The sub-networks' gradients and KL added to the full pass's, in slot order."""
        for grads, kl in zip(self.sub_grads, self.sub_kl):
            torch._foreach_add_(self.grads, grads)
            self.kl.add_(kl)

    def _update(self) -> None:
        """SGD (nesterov, weight decay) with the summed gradients and the device learning rate."""
        from torch.optim.sgd import sgd

        bufs = [self.optimizer.state[p].get("momentum_buffer") for p in self.params]   # (None: momentum 0)
        self._collect()
        with torch.no_grad():
            if self.half:   # fused SGD on the CPU too: it is the one that skips an update where found_inf is set
                self._unscale()
                sgd(self.params, self.grads, bufs, fused=True, found_inf=self.found_inf, lr=self.lr,
                    **self.sgd_options)
                self._update_scale()
            else:
                lr = self.lr if self.fused else float(self.lr)   # (CPU: static mode is never captured there)
                sgd(self.params, self.grads, bufs, foreach=not self.fused, fused=self.fused, lr=lr, **self.sgd_options)
            self.loss.copy_(self.ce + self.kl)

    # -- a step -------------------------------------------------------------------------------------------

    def _allocate(self, batch: Batch) -> None:
        x = batch.x if batch.xu is None else torch.cat([batch.x, batch.xu])
        self.x = torch.zeros_like(x).contiguous(memory_format=self.memory_format)
        self.y = torch.zeros_like(batch.y)
        self.y2 = torch.zeros_like(batch.y)
        if self.subnets:
            self.target = torch.zeros((x.shape[0], self.num_classes), device=self.device)

    def _load(self, batch: Batch, gen: torch.Generator, lr: float) -> list:
        """Draw this step's plan from ``gen`` (as the eager step does, in the same order) and fill the inputs."""
        plan = sample_subnets(self.cfg, gen) if self.subnets else []
        mix = cutmix.draw(batch.x, cutmix.prob(self.cfg), gen)
        b = batch.y.numel()
        x_lab = batch.x if mix is None else cutmix.apply(batch.x, mix)
        self.x[:b].copy_(x_lab)
        if batch.xu is not None:
            self.x[b:].copy_(batch.xu)
        self.y.copy_(batch.y)
        if mix is None:
            self.y2.copy_(batch.y)
            self.lam.fill_(1.0), self.lam2.fill_(0.0)
        else:
            self.y2.copy_(batch.y[mix.perm])
            self.lam.fill_(mix.lam), self.lam2.fill_(1.0 - mix.lam)
        self.lr.fill_(lr)
        return plan

    def _run_parts(self, plan: list, replay: bool = False, first: bool = False) -> None:
        """Full pass, the plan's sub-networks, update: replayed from the graphs, or called (``first``: the run's
        first update, which creates the momentum buffers). With ``streams``, the replayed sub-networks run side
        by side, one stream each, between the full pass and the update."""
        run = (lambda key, fn: self.graphs[key].replay()) if replay else (lambda key, fn: fn())
        run("full", self._full)
        for slot, sub in enumerate(plan):
            self.masks[slot].fill(sub.width)
        if replay:
            self._replay_subs(plan, side_by_side=bool(self.streams))
        else:
            for slot, sub in enumerate(plan):
                self._sub(slot, sub.resolution)
        run("update", self._first_update if first else self._update)

    def _replay_subs(self, plan: list, side_by_side: bool) -> None:
        """The plan's sub-network graphs: side by side on the slots' streams (``streams``), or one after another."""
        if not side_by_side:
            for slot, sub in enumerate(plan):
                self.graphs[("sub", slot, sub.resolution)].replay()
            return
        main = torch.cuda.current_stream(self.device)
        for slot, sub in enumerate(plan):
            self.streams[slot].wait_stream(main)
            with torch.cuda.stream(self.streams[slot]):
                self.graphs[("sub", slot, sub.resolution)].replay()
        for stream in self.streams:
            main.wait_stream(stream)

    def _first_update(self) -> None:
        """Momentum buffers are created by torch's own SGD at a run's first step (buf = gradient). -fp16: a step
        whose gradients overflowed is skipped (read on the host: this part is never captured), and the next step
        is a first one again."""
        self._collect()
        if self.half:
            with torch.no_grad():
                self._unscale()
                self._update_scale()
            if self.found_inf.item():
                self.loss.copy_(self.ce + self.kl)
                return
        group = self.optimizer.param_groups[0]
        old = group["lr"]
        group["lr"] = float(self.lr)
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.optimizer.step()
        for p in self.params:
            p.grad = None
        group["lr"] = old
        self.loss.copy_(self.ce + self.kl)

    def __call__(self, batch: Batch, gen: torch.Generator, lr: float, model_gen: torch.Generator | None = None) -> dict:
        self.model.train()
        if self.x is None:
            self._allocate(batch)
        plan = self._load(batch, gen, lr)
        if self.captured:
            self._run_parts(plan, replay=True)
        else:
            fresh = bool(self.sgd_options["momentum"]) and any(
                "momentum_buffer" not in self.optimizer.state.get(p, {}) for p in self.params)
            if not self.capture or fresh:
                self._run_parts(plan, first=fresh)
            else:
                self._capture_and_run(plan)
        return {"loss": self.loss, "ce": self.ce, "kl": self.kl, "correct": self.correct, "n": self.y.numel()}

    def _capture_and_run(self, plan: list) -> None:
        """Warm up on a side stream (this step, for real, then every sub-network slot at every resolution once
        more: those passes only write their slots' buffers, which the next step overwrites), capture every part
        into graphs sharing one memory pool (each part's temporaries die with it; with ``streams`` each slot has
        a pool of its own, as its graphs run beside the others), then go on replaying.

        With ``tune``, cuDNN's benchmark mode picks each convolution's fastest algorithm during the warm-up:
        the shapes are fixed (one per resolution), so that happens once per run, never again per step."""
        old_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.tune
        try:
            self._warm_and_capture(plan)
        finally:
            torch.backends.cudnn.benchmark = old_benchmark

    def _warm_and_capture(self, plan: list) -> None:
        side = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self._run_parts(plan)   # this step, for real: its logs are this step's logs
        resolutions = sorted(set(self.cfg.resolutions)) if self.subnets else []
        # every (slot, resolution) pass once more (they write only their slots' buffers, which the next step
        # overwrites), with ``streams`` on the slot's own stream, where its graphs are captured: per-stream library
        # workspaces are then set up, and kept apart, before capture (without ``streams`` every part is captured
        # on torch's default capture stream)
        slot_streams = self.streams or [side] * self.subnets
        for slot in range(self.subnets):
            slot_streams[slot].wait_stream(side)
            with torch.cuda.stream(slot_streams[slot]):
                self.masks[slot].fill(1.0)
                for r in resolutions:
                    self._sub(slot, r)
            side.wait_stream(slot_streams[slot])
        main.wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        # side by side, the slots' graphs must not share memory: one pool per slot
        slot_pools = [torch.cuda.graph_pool_handle() for _ in range(self.subnets)] if self.streams else [pool] * self.subnets
        parts: list[tuple[object, Callable[[], None], object, object]] = [
            ("full", self._full, pool, None), ("update", self._update, pool, None)]
        parts += [(("sub", slot, r), functools.partial(self._sub, slot, r), slot_pools[slot],
                   self.streams[slot] if self.streams else None)
                  for slot in range(self.subnets) for r in resolutions]
        # capture records the kernels without running them: the state is what the warm-up step left
        failed = self._capture_all(parts)
        if failed is not None and self.streams:
            # side by side needs a stream and a memory pool per slot: where that fails (out of memory, a torch or
            # driver that cannot capture on those streams), the slots' graphs one after another in the shared pool
            self.streams = None
            self.note(f"capturing the sub-networks side by side failed ({first_line(failed)}); capturing them one "
                      "after another (same results, slower)")
            failed = self._capture_all([(key, fn, pool, None) for key, fn, _, _ in parts])
        if failed is not None:   # an op that cannot be captured on this torch/driver: same math, uncaptured
            self.capture, self.streams = False, None
            self.note(f"CUDA graph capture failed ({first_line(failed)}); training goes on with uncaptured "
                      "fixed-shape steps (same results, slower; --no-compile for the eager ones)")
        else:
            self.captured = True

    def _capture_all(self, parts: list) -> RuntimeError | None:
        """Capture every part into ``self.graphs``; on failure, no graph kept and the error returned."""
        try:
            for key, fn, part_pool, stream in parts:
                self.graphs[key] = self._capture_part(fn, part_pool, stream)
        except RuntimeError as exc:   # (torch.OutOfMemoryError is one too)
            self.graphs.clear()
            return exc
        return None

    @staticmethod
    def _capture_part(fn: Callable[[], None], pool, stream) -> torch.cuda.CUDAGraph:
        """``fn``'s kernels as one CUDA graph in memory ``pool``, captured on ``stream`` (None: torch's own)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            fn()
        return graph


def make_step(mode: str, *, model: nn.Module, net: nn.Module, optimizer: torch.optim.Optimizer, cfg, spec, autocast,
              amp: bool, memory_format, num_classes: int,
              note: Callable[[str], None] | None = None) -> EagerStep | StaticStep:
    """The step runner for ``mode`` (see :func:`choose_mode`)."""
    if mode == "eager":
        return EagerStep(model, net, optimizer, cfg, spec, autocast)
    if mode not in STATIC_MODES:
        raise ValueError(f"unknown step mode {mode!r} (eager, {', '.join(STATIC_MODES)})")
    if cfg.method not in STATIC_METHODS:
        raise ValueError(f"no static step for method {cfg.method}")
    if net is not model:
        raise ValueError("static steps run one process (no DistributedDataParallel wrapper)")
    return StaticStep(model, optimizer, cfg, num_classes=num_classes, amp=amp, memory_format=memory_format,
                      capture=mode.startswith("graphs"), tune="-untuned" not in mode, inductor="-inductor" in mode,
                      streams="-streams" in mode, half=mode.endswith("-fp16"), note=note)


def _backward_compiled_with_forward():
    """A context in which a new torch.compile graph gets its backward compiled at once, with the forward
    (AOTAutograd otherwise compiles it lazily at the first backward, outside ``_forward``'s fallback); where this
    torch has no such switch, nothing."""
    import torch._functorch.config as functorch_config

    if not hasattr(functorch_config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return functorch_config.patch(force_non_lazy_backward_lowering=True)
