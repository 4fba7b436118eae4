"""L-inf attacks for robustness curves: a fast FGSM epsilon sweep and a PGD companion.

torchattacks is the reference. Its FGSM is ``clamp(x + eps * sign(grad), 0, 1)`` where ``grad`` is the
input gradient of the *mean* cross-entropy over the batch, with the model in eval mode. The direction
``sign(grad)`` does not depend on ``eps``, so a sweep over k epsilons needs one forward+backward per batch
and then one forward per epsilon, instead of k forward+backward pairs plus k forwards. The clean
accuracy (eps 0) is read from the logits of that gradient pass, so it costs no extra forward either.

In fp32 the adversarial images (and hence the per-epsilon accuracies) equal ``torchattacks.FGSM(model,
eps)`` bit for bit when the batch size is the same (tests/test_attacks.py checks this). With ``amp`` (bf16
autocast, the default on CUDA) the forwards run in bf16 and the numbers are close, not identical.

Inputs are images in [0, 1] (or uint8, scaled by /255), NCHW; the model normalises inside (see
DESIGN.md). Nothing here prints or writes files.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.distributed import all_sum, mine
from robustkit.errors import RobustkitError, first_line
from robustkit.rng import derive_seed, generator

__all__ = ["parse_eps", "fgsm_sweep", "fgsm_images", "pgd_images", "pgd_sweep", "torchattacks_sweep",
           "parse_attack_params"]

_EPS_FORMS = ("use A..B (with --eps-step), a comma list like 0.01,0.03,0.1, or one value (fractions such as 8/255 "
              "work too); all in [0, 1] pixel units")
_FLOAT = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_NUMBER = rf"\s*({_FLOAT}(?:/{_FLOAT})?)\s*"   # a number or a fraction such as 8/255
_RANGE_RE = re.compile(rf"^{_NUMBER}\.\.{_NUMBER}$")
_MAX_EPS_VALUES = 10_000


# --------------------------------------------------------------------------------------------- parsing


def parse_eps(text: str, step: float = 0.05) -> list[float]:
    """Parse ``--eps``: ``"A..B"`` (inclusive, every ``step``), ``"a,b,c"`` or ``"x"``.

    Returns sorted unique values with 0 first (rounded to 12 decimals: float noise such as 0.1 + 0.2 goes, a
    fraction such as 8/255 stays what it says to float32 precision), because the clean accuracy is the
    baseline every robustness curve is read against. A range includes B when B lies on the grid
    A, A+step, ...; the grid is built from integer multiples of ``step`` (not repeated addition), so
    ``0.05..0.25`` gives exactly ``[0, 0.05, 0.1, 0.15, 0.2, 0.25]``.
    """
    if not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
        raise RobustkitError(f"--eps-step must be a number > 0, got {step!r}")
    raw = str(text).strip()
    m = _RANGE_RE.match(raw)
    if m:
        lo, hi = _value(m.group(1)), _value(m.group(2))
        _check_range(raw, [lo, hi])
        if lo > hi:
            raise RobustkitError(f"--eps {raw!r}: range start {lo} is above its end {hi}; {_EPS_FORMS}")
        count = math.floor((hi - lo) / step + 1e-9) + 1
        if count > _MAX_EPS_VALUES:
            raise RobustkitError(f"--eps {raw!r} with step {step} gives {count} values; use a larger --eps-step")
        values = [lo + i * step for i in range(count)]
    else:
        parts = raw.split(",")
        if not raw or any(not re.fullmatch(_NUMBER, p) for p in parts):
            raise RobustkitError(f"--eps {raw!r} is not understood; {_EPS_FORMS}")
        values = [_value(p) for p in parts]
        _check_range(raw, values)
    return sorted({0.0, *(round(v, 12) for v in values)})


def _value(text: str) -> float:
    num, _, den = text.strip().partition("/")
    if den and float(den) == 0:
        raise RobustkitError(f"--eps {text.strip()!r} divides by zero; {_EPS_FORMS}")
    return float(num) / float(den) if den else float(num)


def _check_range(raw: str, values: Sequence[float]) -> None:
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise RobustkitError(f"--eps {raw!r}: {bad[0]} is outside [0, 1]; {_EPS_FORMS}")


# ------------------------------------------------------------------------------------------ validation


def _check_eps_list(eps: Sequence[float]) -> list[float]:
    values = [float(e) for e in eps]
    if not values:
        raise RobustkitError("no epsilon given: pass at least one value in [0, 1], e.g. [0, 0.05, 0.1]")
    bad = [e for e in values if not (math.isfinite(e) and 0.0 <= e <= 1.0)]
    if bad:
        raise RobustkitError(f"epsilon {bad[0]} is outside [0, 1]: epsilons are in pixel units of [0, 1] images")
    return values


def _check_data(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> int:
    """Validate shapes/dtypes once, up front; returns the number of images."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise RobustkitError(f"images must be an NCHW tensor, got {shape}: add a batch dimension or permute NHWC -> NCHW")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or len(labels) != len(images):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise RobustkitError(f"labels must be a 1-D tensor with one label per image ({len(images)}), got {got}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise RobustkitError(f"labels must be integer class indices (int64), got {labels.dtype}")
    if len(images) == 0:
        raise RobustkitError("no images to attack: pass at least one image")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RobustkitError(f"batch_size must be a positive integer, got {batch_size!r}")
    if images.dtype == torch.uint8:
        return len(images)
    if not images.is_floating_point():
        raise RobustkitError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
    # One reduction over everything (one device sync), not one per batch.
    lo, hi = torch.aminmax(images.detach())
    lo, hi = float(lo), float(hi)
    if not (0.0 <= lo and hi <= 1.0):
        raise RobustkitError(
            f"float images must lie in [0, 1], found values in [{lo:.3g}, {hi:.3g}]: pass unnormalised images "
            "(the model normalises inside) or uint8"
        )
    return len(images)


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The model's device by default; an explicit device must match where the model lives."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    model_device = tensor.device if tensor is not None else None
    if device is None:
        return model_device or torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if model_device is not None and model_device != device:
        raise RobustkitError(
            f"the model is on {model_device} but device={device} was asked: call model.to({str(device)!r}) first"
        )
    return device


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the attack; afterwards every submodule gets its own previous flag back.

    Restoring per module (not ``model.train(flag)``) keeps a deliberately mixed state, e.g. frozen
    BatchNorm layers inside a training model, exactly as the caller left it.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _autocast(device: torch.device, amp: bool | None) -> Callable:
    """bf16 autocast on ``device`` when ``amp`` (default: on for CUDA, off elsewhere); CPU supports it too."""
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp)


def _channels_last(device: torch.device, channels_last: bool | None) -> bool:
    return (device.type == "cuda") if channels_last is None else bool(channels_last)


def _batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, channels_last: bool = False
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Yield (start, end, x in [0,1] float32 on device, int64 labels on device), one batch at a time.

    Only the current batch is moved, so a dataset held on the CPU never has to fit on the GPU; when the
    caller already holds everything on the device, ``.to`` is a no-op. ``channels_last``: the batch is
    laid out NHWC in memory (what a channels_last model wants; same values).
    """
    from robustkit.prefetch import device_batches

    n = len(images)
    # under torchrun only this rank's batches (counts are summed at the end); host data is streamed with the
    # next batch prefetched (robustkit.prefetch)
    for start, xb, yb in device_batches(images, labels, batch_size, device, mine):
        if xb.dtype == torch.uint8:
            x = xb.float() / 255  # the division (not * 1/255) is what "uint8 scaled /255" means, bit for bit
        else:
            x = xb.float()
            if x.is_inference():  # inference-mode tensors cannot join an autograd graph
                with torch.inference_mode(False):
                    x = x.clone()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = yb.to(dtype=torch.int64)
        yield start, min(start + batch_size, n), x, y


# ---------------------------------------------------------------------------------------------- FGSM


def fgsm_sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: Sequence[float],
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    progress: Callable[[int], None] | None = None,
    channels_last: bool | None = None,
) -> list[dict]:
    """Accuracy under FGSM for every epsilon in ``eps``, one gradient per batch.

    Args:
        model: classifier taking [0, 1] NCHW images (it normalises inside); put in eval mode during the
            attack, and every module's previous training flag is restored afterwards.
        images: uint8 (scaled /255) or float in [0, 1], NCHW, on any device.
        labels: integer class indices, one per image.
        eps: epsilons in [0, 1] pixel units, reported in this order (0 is not added here; ``parse_eps``
            adds it). eps 0 is the clean accuracy.
        batch_size: images per gradient pass. The gradient is the mean cross-entropy over the batch, as
            in torchattacks, so results equal torchattacks' only for the same batch size (the signs,
            hence the accuracies, agree across batch sizes up to rounding of near-zero gradients).
        device: where to compute; default (and it must be) the model's device.
        amp: bf16 autocast for the forwards (default: on for CUDA, off elsewhere). Bit-exact equality
            with torchattacks holds in fp32 only.
        progress: called after each batch with the cumulative number of images finished.
        channels_last: feed NHWC-laid-out batches (default: on for CUDA); the CUDA layout, also on the CPU.

    Returns:
        ``[{"eps": e, "accuracy": fraction in [0, 1], "n": number of images}, ...]`` in the order of ``eps``.

    Model parameters receive no ``.grad``: only the input gradient is taken (``torch.autograd.grad``).
    """
    eps_list = _check_eps_list(eps)
    n = _check_data(images, labels, batch_size)
    device = _resolve_device(model, device)
    autocast = _autocast(device, amp)

    # inference_mode(False): the gradient pass must work even if the caller runs under inference_mode.
    with _eval_mode(model), torch.inference_mode(False):
        correct = torch.zeros(len(eps_list), dtype=torch.int64, device=device)  # device counts: no per-batch sync
        for _, done, x, y in _batches(images, labels, batch_size, device, _channels_last(device, channels_last)):
            # One forward+backward: the direction shared by every epsilon.
            with autocast():
                x, direction, logits = _fgsm_direction(model, x, y)
            clean_hits = (logits.argmax(1) == y).sum()
            del logits

            with torch.no_grad(), autocast():
                for i, e in enumerate(eps_list):
                    if e == 0.0:
                        # x + 0 * sign(g) == x: the gradient pass already saw exactly these images.
                        correct[i] += clean_hits
                        continue
                    correct[i] += (model(_fgsm_step(x, direction, e)).argmax(1) == y).sum()
            if progress is not None:
                progress(done)

    counts = all_sum(correct).tolist()  # the only device sync of the sweep
    return [{"eps": e, "accuracy": c / n, "n": n} for e, c in zip(eps_list, counts)]


def _fgsm_direction(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x detached, sign of the input gradient of the mean cross-entropy, detached logits).

    Exactly torchattacks.FGSM's gradient: ``nn.CrossEntropyLoss()`` (batch mean) on the model's logits,
    ``torch.autograd.grad`` w.r.t. the input only, so no ``.grad`` lands on the parameters and the
    backward skips the weight gradients. Runs under whatever autocast the caller set.
    """
    x = x.detach().requires_grad_(True)  # a new tensor object: the caller's images are not flagged
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)  # .float() is a no-op in fp32; bf16 logits -> fp32 loss
    (grad,) = torch.autograd.grad(loss, x)
    return x.detach(), grad.sign(), logits.detach()


def _fgsm_step(x: torch.Tensor, direction: torch.Tensor, eps: float) -> torch.Tensor:
    """The adversarial image; the same expression as torchattacks.FGSM, so it matches bit for bit."""
    return torch.clamp(x + eps * direction, min=0, max=1)


def fgsm_images(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float]) -> list[torch.Tensor]:
    """The FGSM adversarial images of one batch for each epsilon: exactly what ``fgsm_sweep`` evaluates.

    For inspection, plots and tests; fp32, eval mode (restored afterwards), no parameter gradients.
    ``x`` float in [0, 1] on the model's device.
    """
    eps_list = _check_eps_list(eps)
    with _eval_mode(model), torch.inference_mode(False):
        x, direction, _ = _fgsm_direction(model, x.float(), y.long())
    return [_fgsm_step(x, direction, e) for e in eps_list]


# ----------------------------------------------------------------------------------------------- PGD


def _pgd_check(steps: int, alpha: float | None) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise RobustkitError(f"--steps must be a positive integer, got {steps!r}")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise RobustkitError(f"--alpha must be a number > 0 (step size in [0, 1] pixel units), got {alpha!r}")


def pgd_images(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
               generator: torch.Generator | None = None, autocast: Callable = contextlib.nullcontext) -> torch.Tensor:
    """L-inf PGD with a uniform random start, exactly torchattacks.PGD's semantics (v3.5).

    ``x' = clamp(x + U(-eps, eps), 0, 1)``, then ``steps`` times: ``x' += alpha * sign(grad of the batch-mean
    cross-entropy)``, projected back onto the eps-ball around ``x`` and clamped to [0, 1]. The random start is
    drawn from ``generator`` (torchattacks draws it from the global generator of the device: seeding both the
    same gives the same start, hence the same images in fp32). The model is used as it is (call in eval mode).
    """
    x = x.detach()
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    adv = torch.clamp(x + noise, min=0, max=1).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad(), autocast():
            loss = F.cross_entropy(model(adv).float(), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        adv = torch.clamp(x + delta, min=0, max=1).detach()
    return adv


def pgd_sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: Sequence[float],
    steps: int = 10,
    alpha: float | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
) -> list[dict]:
    """Accuracy under L-inf PGD (random start; torchattacks.PGD's semantics) for every epsilon in ``eps``.

    The stronger companion of :func:`fgsm_sweep`: ``steps`` signed-gradient steps of size ``alpha``
    projected onto the eps-ball, from a uniform random start. ``alpha`` defaults to ``2.5 * eps / steps``
    per epsilon (Madry et al.), so the walk can reach the ball's surface from anywhere inside it.

    Native (no torchattacks needed): the random start of each batch comes from a private generator on the
    device seeded from ``(seed, batch start)``, so the caller's random stream is not consumed, a batch's
    result does not depend on which other epsilons are swept, and every epsilon starts from the same
    uniform draw scaled to its ball (common random numbers, a smoother curve). In fp32 the adversarial
    images equal ``torchattacks.PGD`` run after ``torch.manual_seed`` with the same seed (tested).
    eps 0 is the clean accuracy (no attack is run). Records as in :func:`fgsm_sweep`.
    """
    eps_list = _check_eps_list(eps)
    n = _check_data(images, labels, batch_size)
    _pgd_check(steps, alpha)
    device = _resolve_device(model, device)
    autocast = _autocast(device, amp)
    with _eval_mode(model), torch.inference_mode(False):
        correct = torch.zeros(len(eps_list), dtype=torch.int64, device=device)
        for start, done, x, y in _batches(images, labels, batch_size, device, _channels_last(device, channels_last)):
            with torch.no_grad(), autocast():
                clean_hits = (model(x).argmax(1) == y).sum()
            for i, e in enumerate(eps_list):
                if e == 0.0:
                    correct[i] += clean_hits
                    continue
                step = alpha if alpha is not None else 2.5 * e / steps
                x_adv = pgd_images(model, x, y, e, step, steps, generator(device, "pgd", seed, start), autocast)
                with torch.no_grad(), autocast():
                    correct[i] += (model(x_adv).argmax(1) == y).sum()
            if progress is not None:
                progress(done)
    counts = all_sum(correct).tolist()
    return [{"eps": e, "accuracy": c / n, "n": n} for e, c in zip(eps_list, counts)]


# ------------------------------------------------------------------------------- any torchattacks attack


@contextlib.contextmanager
def _private_rng(device: torch.device) -> Iterator[Callable[[int], None]]:
    """Fork the RNG of ``device`` (the caller's stream is untouched) and yield a seeding function.

    torchattacks draws its randomness from the global generators; only the attacked device's is seeded.
    """
    if device.type == "cuda":
        with torch.random.fork_rng(devices=[device.index]), torch.cuda.device(device):
            yield torch.cuda.manual_seed
    else:
        with torch.random.fork_rng(devices=[]):
            yield torch.default_generator.manual_seed


def torchattacks_class(name: str):
    """The torchattacks attack class called ``name`` (case-insensitive); one clear error otherwise."""
    try:
        import torchattacks
    except ImportError:
        raise RobustkitError(
            f"--attack torchattacks:{name} needs torchattacks: pip install 'robustkit[torchattacks]' "
            "(fgsm and pgd need nothing extra)") from None
    import difflib
    import inspect

    classes = {n: c for n, c in vars(torchattacks).items()
               if inspect.isclass(c) and issubclass(c, torchattacks.attack.Attack) and c is not torchattacks.attack.Attack}
    by_lower = {n.lower(): n for n in classes}
    if name.lower() not in by_lower:
        close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise RobustkitError(f"torchattacks has no attack {name!r}: {hint}available: {', '.join(sorted(classes))}")
    return classes[by_lower[name.lower()]]


def parse_attack_params(items: Sequence[str]) -> dict:
    """``["steps=20", "norm=Linf"]`` -> ``{"steps": 20, "norm": "Linf"}`` (values read as YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise RobustkitError(f"--attack-param {item!r} is not KEY=VALUE (e.g. --attack-param steps=20)")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def check_torchattacks(name: str, params: dict | None = None) -> tuple[type, dict]:
    """(the attack class, a copy of ``params``) after checking that the attack has an ``eps`` budget and
    takes every parameter given; one clear error otherwise. Cheap: run it before any work starts."""
    import inspect

    cls = torchattacks_class(name)
    params = dict(params or {})
    signature = inspect.signature(cls.__init__).parameters
    if "eps" not in signature:
        raise RobustkitError(
            f"torchattacks.{cls.__name__} has no eps budget (its arguments: "
            f"{', '.join(p for p in signature if p not in ('self', 'model'))}); robustkit sweeps eps-bounded attacks "
            "only: use it from Python on robustkit.load_checkpoint's model")
    if "eps" in params:
        raise RobustkitError("give the budget with --eps, not --attack-param eps=...")
    unknown = sorted(set(params) - set(signature) - {"self", "model"})
    if unknown:
        takes = [p for p in signature if p not in ("self", "model", "eps")]
        raise RobustkitError(f"torchattacks.{cls.__name__} takes no argument {', '.join(unknown)}: "
                             + (f"it takes {', '.join(takes)}" if takes else "it takes none besides --eps"))
    return cls, params


def torchattacks_sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: Sequence[float],
    name: str,
    params: dict | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """Accuracy under any eps-bounded torchattacks attack (``AutoAttack``, ``APGD``, ``Square``, ...).

    One attack object per epsilon, built as ``torchattacks.<name>(model, eps=e, **params)``; an attack
    with an ``n_classes`` argument gets the model's class count unless ``params`` sets it. Randomness is
    seeded per batch from ``(seed, batch start)`` inside a forked RNG. fp32, eval mode.
    """
    import inspect

    cls, params = check_torchattacks(name, params)
    signature = inspect.signature(cls.__init__).parameters
    if "n_classes" in signature and "n_classes" not in params and num_classes is not None:
        params["n_classes"] = num_classes
    eps_list = _check_eps_list(eps)
    n = _check_data(images, labels, batch_size)
    device = _resolve_device(model, device)
    try:
        attacks = {i: cls(model, eps=e, **params) for i, e in enumerate(eps_list) if e > 0}
    except (TypeError, ValueError) as exc:
        raise RobustkitError(f"torchattacks.{cls.__name__}({params}) failed: {exc}") from None
    for atk in attacks.values():
        atk.set_device(device)
    with _eval_mode(model), torch.inference_mode(False), _private_rng(device) as reseed:
        correct = torch.zeros(len(eps_list), dtype=torch.int64, device=device)
        for start, done, x, y in _batches(images, labels, batch_size, device):
            with torch.no_grad():
                clean_hits = (model(x).argmax(1) == y).sum()
            for i in range(len(eps_list)):
                if i not in attacks:
                    correct[i] += clean_hits
                    continue
                reseed(derive_seed("torchattacks", seed, start))
                try:
                    x_adv = attacks[i](x, y)
                except (TypeError, ValueError) as exc:   # what a parameter of the wrong type or range raises
                    raise RobustkitError(f"torchattacks.{cls.__name__} with {params or 'its defaults'} failed: "
                                         f"{type(exc).__name__}: {first_line(exc)}; check --attack-param") from None
                with torch.no_grad():
                    correct[i] += (model(x_adv).argmax(1) == y).sum()
            if progress is not None:
                progress(done)
    counts = all_sum(correct).tolist()
    return [{"eps": e, "accuracy": c / n, "n": n} for e, c in zip(eps_list, counts)]
