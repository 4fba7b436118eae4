"""FGSM sweep / PGD: equality with torchattacks, FGSM invariants, eps parsing, side effects.

The model is a small BatchNorm CNN that normalises inside (it takes [0, 1] images, like every robustkit
model), with fixed weights committed in tests/assets (trained once on sklearn's bundled digits, 8x8
upscaled to 16 px, 3 channels; see tests/digits_net.py), so that clean accuracy is high, the robustness
curve has something to lose, and every number below is the same on every machine.
"""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from digits_net import load_fixed
from robustkit.attacks import fgsm_images, fgsm_sweep, parse_eps, pgd_sweep
from robustkit.errors import RobustkitError

EPS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.1]
BATCH = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(one_torch_thread):
    """(model with fixed committed weights, in eval mode; test images float [0,1]; uint8; labels).

    Fixed weights, not trained here: see tests/digits_net.py.
    """
    return load_fixed()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = BATCH) -> float:
    with torch.no_grad():
        hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch), y.split(batch)))
    return hits / len(x)


def _torchattacks_fgsm(model, x, y, eps, batch=BATCH):
    """What a user writes with torchattacks: attack batch by batch, then count."""
    advs, hits = [], 0
    for xb, yb in zip(x.split(batch), y.split(batch)):
        adv = torchattacks.FGSM(model, eps=eps)(xb, yb)
        advs.append(adv)
        with torch.no_grad():
            hits += int((model(adv).argmax(1) == yb).sum())
    return torch.cat(advs), hits / len(x)


# --------------------------------------------------------------------------------------------- FGSM


def test_clean_accuracy_is_high(trained):
    model, x, _, y = trained
    assert _accuracy(model, x, y) > 0.9


def test_sweep_equals_torchattacks_exactly(trained):
    model, x, _, y = trained
    records = fgsm_sweep(model, x, y, EPS, batch_size=BATCH)
    assert [r["eps"] for r in records] == EPS
    assert all(r["n"] == len(x) for r in records)
    for r in records:
        _, ref_acc = _torchattacks_fgsm(model, x, y, r["eps"])
        assert r["accuracy"] == ref_acc, r


def test_adversarial_images_equal_torchattacks_bitwise(trained):
    model, x, _, y = trained
    xb, yb = x[:BATCH], y[:BATCH]
    ours = fgsm_images(model, xb, yb, EPS)
    for e, adv in zip(EPS, ours):
        ref = torchattacks.FGSM(model, eps=e)(xb, yb)
        assert torch.equal(adv, ref), e


def test_fgsm_invariants(trained):
    model, x, _, y = trained
    xb, yb = x[:BATCH], y[:BATCH]
    for e, adv in zip(EPS, fgsm_images(model, xb, yb, EPS)):
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - xb).abs().max() <= e + 1e-6
        if e == 0:
            assert torch.equal(adv, xb)
        else:  # pixels not pinned at the border move by exactly eps
            free = (xb - e >= 0) & (xb + e <= 1)
            assert torch.allclose((adv - xb).abs()[free], torch.full_like(xb[free], e), atol=1e-6)


def test_eps0_is_clean_and_curve_falls(trained):
    model, x, _, y = trained
    acc = [r["accuracy"] for r in fgsm_sweep(model, x, y, EPS, batch_size=BATCH)]
    assert acc[0] == _accuracy(model, x, y)
    assert all(b <= a for a, b in zip(acc, acc[1:])), acc
    assert acc[-1] < acc[0] - 0.3, acc


def test_records_follow_given_order_without_adding_zero(trained):
    model, x, _, y = trained
    by_eps = {r["eps"]: r["accuracy"] for r in fgsm_sweep(model, x, y, [0.0, 0.05, 0.1], batch_size=BATCH)}
    records = fgsm_sweep(model, x, y, [0.1, 0.05], batch_size=BATCH)
    assert [r["eps"] for r in records] == [0.1, 0.05]
    assert [r["accuracy"] for r in records] == [by_eps[0.1], by_eps[0.05]]


def test_no_parameter_grads_and_training_flags_restored(trained):
    model, x, _, y = trained
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.train()
    model.features[1].eval()  # a deliberately mixed state must survive too
    try:
        fgsm_sweep(model, x[:64], y[:64], [0.0, 0.1], batch_size=32)
        pgd_sweep(model, x[:32], y[:32], [0.1], steps=2, batch_size=32)
        flags = [m.training for m in model.modules()]
    finally:
        model.eval()
    assert flags == [m is not model.features[1] for m in model.modules()]
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # BN stats: eval mode was used


def test_eval_mode_used_even_if_model_is_training(trained):
    model, x, _, y = trained
    expected = fgsm_sweep(model, x, y, [0.0, 0.1], batch_size=BATCH)
    model.train()
    try:
        got = fgsm_sweep(model, x, y, [0.0, 0.1], batch_size=BATCH)
    finally:
        model.eval()
    assert got == expected


def test_uint8_equals_float(trained):
    model, x, u8, y = trained
    assert fgsm_sweep(model, u8, y, EPS, batch_size=BATCH) == fgsm_sweep(model, x, y, EPS, batch_size=BATCH)


def test_batch_size_independent(trained):
    """The gradient's 1/N scale does not change its sign; only rounding of ~0 gradients could.

    Allow one image of slack per epsilon so the test does not depend on the CPU's kernel choice.
    """
    model, x, _, y = trained
    a = fgsm_sweep(model, x, y, EPS, batch_size=BATCH)
    b = fgsm_sweep(model, x, y, EPS, batch_size=50)
    c = fgsm_sweep(model, x, y, EPS, batch_size=len(x))
    for ra, rb, rc in zip(a, b, c):
        assert abs(ra["accuracy"] - rb["accuracy"]) <= 1 / len(x)
        assert abs(ra["accuracy"] - rc["accuracy"]) <= 1 / len(x)


def test_progress_and_inputs_untouched(trained):
    model, x, _, y = trained
    seen: list[int] = []
    x_in = x.clone()
    fgsm_sweep(model, x_in, y, [0.0, 0.1], batch_size=150, progress=seen.append)
    assert seen == [150, 300, len(x)]
    assert torch.equal(x_in, x) and not x_in.requires_grad


def test_works_under_inference_mode(trained):
    model, x, _, y = trained
    expected = fgsm_sweep(model, x[:64], y[:64], [0.0, 0.1], batch_size=64)
    with torch.inference_mode():
        xi = x[:64].clone()
        assert fgsm_sweep(model, xi, y[:64], [0.0, 0.1], batch_size=64) == expected


def test_amp_on_cpu_is_close(trained):
    model, x, _, y = trained
    fp32 = fgsm_sweep(model, x, y, [0.0, 0.1], batch_size=BATCH, amp=False)
    bf16 = fgsm_sweep(model, x, y, [0.0, 0.1], batch_size=BATCH, amp=True)
    for a, b in zip(fp32, bf16):
        assert abs(a["accuracy"] - b["accuracy"]) < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=[1.5]), "outside"),
        (dict(eps=[]), "no epsilon"),
        (dict(eps=[float("nan")]), "outside"),
        (dict(batch_size=0), "batch_size"),
        (dict(images=torch.rand(4, 3, 8)), "NCHW"),
        (dict(images=torch.rand(4, 3, 8, 8) * 2 - 0.5), r"\[0, 1\]"),
        (dict(images=torch.zeros(4, 3, 8, 8, dtype=torch.int32)), "uint8"),
        (dict(labels=torch.zeros(3, dtype=torch.int64)), "one label per image"),
        (dict(labels=torch.zeros(4)), "integer"),
        (dict(images=torch.rand(0, 3, 8, 8), labels=torch.zeros(0, dtype=torch.int64)), "no images"),
        (dict(device="meta"), "model.to"),
    ],
)
def test_sweep_errors(trained, kwargs, match):
    model = trained[0]
    args = dict(images=torch.rand(4, 3, 8, 8), labels=torch.zeros(4, dtype=torch.int64), eps=[0.0, 0.1])
    args.update(kwargs)
    with pytest.raises(RobustkitError, match=match):
        fgsm_sweep(model, args.pop("images"), args.pop("labels"), **args)


# ---------------------------------------------------------------------------------------------- PGD


def test_pgd_is_stronger_reproducible_and_private(trained):
    model, x, _, y = trained
    eps = [0.0, 0.05, 0.1]
    fgsm = fgsm_sweep(model, x, y, eps, batch_size=BATCH)
    state = torch.get_rng_state()
    pgd = pgd_sweep(model, x, y, eps, steps=5, batch_size=BATCH, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is not consumed
    assert pgd[0]["accuracy"] == fgsm[0]["accuracy"]  # eps 0 = clean
    for p, f in zip(pgd[1:], fgsm[1:]):
        assert p["accuracy"] <= f["accuracy"], (p, f)
    assert pgd[1]["accuracy"] < fgsm[1]["accuracy"]
    assert pgd_sweep(model, x, y, eps, steps=5, batch_size=BATCH, seed=1) == pgd
    # a batch's result does not depend on which other epsilons are swept
    assert pgd_sweep(model, x, y, [0.1], steps=5, batch_size=BATCH, seed=1)[0]["accuracy"] == pgd[2]["accuracy"]


def test_pgd_equals_torchattacks_with_same_seed(trained):
    from robustkit.rng import derive_seed

    model, x, _, y = trained
    # eps 0.03: an attack that leaves some images correct, so a different step size (the default alpha is
    # Madry et al.'s 2.5 x eps / steps) changes the accuracy (2.0 x eps / steps gives 0.406 here, not 0.414)
    xb, yb, e, steps = x[:BATCH], y[:BATCH], 0.03, 3
    ours = pgd_sweep(model, xb, yb, [e], steps=steps, batch_size=BATCH, seed=7)[0]["accuracy"]
    torch.manual_seed(derive_seed("pgd", 7, 0))
    adv = torchattacks.PGD(model, eps=e, alpha=2.5 * e / steps, steps=steps)(xb, yb)
    assert 0 < ours < 1 and ours == _accuracy(model, adv, yb)


def test_pgd_errors(trained):
    model, x, _, y = trained
    with pytest.raises(RobustkitError, match="steps"):
        pgd_sweep(model, x, y, [0.1], steps=0)
    with pytest.raises(RobustkitError, match="alpha"):
        pgd_sweep(model, x, y, [0.1], alpha=-1.0)


# ------------------------------------------------------------------------------------------ parse_eps


@pytest.mark.parametrize(
    "text, step, expected",
    [
        ("0.05..0.25", 0.05, [0, 0.05, 0.1, 0.15, 0.2, 0.25]),
        ("0.01,0.03,0.1", 0.05, [0, 0.01, 0.03, 0.1]),
        ("0.1", 0.05, [0, 0.1]),
        ("0", 0.05, [0]),
        ("0..1", 0.1, [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        ("0.1..0.3", 0.1, [0, 0.1, 0.2, 0.3]),  # 0.1 + 2 * 0.1 drifts to 0.30000000000000004 unrounded
        ("0.05..0.22", 0.05, [0, 0.05, 0.1, 0.15, 0.2]),  # off-grid end is not added
        (" 0.2 .. 0.2 ", 0.05, [0, 0.2]),
        ("0.1, 0.03,0.1,0", 0.05, [0, 0.03, 0.1]),  # sorted, unique
        ("8e-3", 0.05, [0, 0.008]),
        ("8/255", 0.05, [0, round(8 / 255, 12)]),   # not 0.031373 (6 decimals, as before): 8/255 in float32
        ("2/255,4/255", 0.05, [0, round(2 / 255, 12), round(4 / 255, 12)]),
    ],
)
def test_parse_eps_forms(text, step, expected):
    assert parse_eps(text, step) == expected


def test_a_fraction_eps_is_the_fraction_in_float32():
    assert torch.tensor(parse_eps("8/255")[1], dtype=torch.float32) == torch.tensor(8 / 255, dtype=torch.float32)


@pytest.mark.parametrize(
    "text, step, match",
    [
        ("", 0.05, "not understood"),
        ("abc", 0.05, "not understood"),
        ("0.1..", 0.05, "not understood"),
        ("0.1,,0.2", 0.05, "not understood"),
        ("nan", 0.05, "not understood"),
        ("1.5", 0.05, "outside"),
        ("-0.1", 0.05, "outside"),
        ("0.1..2", 0.05, "outside"),
        ("0.3..0.1", 0.05, "above its end"),
        ("0.1", 0.0, "eps-step"),
        ("0.1..0.2", -0.05, "eps-step"),
        ("0..1", 1e-6, "larger --eps-step"),
        ("8/0", 0.05, "divides by zero"),
    ],
)
def test_parse_eps_errors(text, step, match):
    with pytest.raises(RobustkitError, match=match) as info:
        parse_eps(text, step)
    assert "\n" not in str(info.value)
    if match in ("not understood", "outside", "above its end"):
        assert "A..B" in str(info.value)  # the message says which forms are accepted


# ---------------------------------------------------------------------------------- robustkit models


def test_equality_on_robustkit_wrn():
    from robustkit.models import create_model

    torch.manual_seed(0)
    model = create_model("wrn-10-1", num_classes=10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)).eval()
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 10, (32,))
    eps = [0.0, 0.01, 0.03]
    records = fgsm_sweep(model, x, y, eps, batch_size=16)
    for r in records:
        assert r["accuracy"] == _torchattacks_fgsm(model, x, y, r["eps"], batch=16)[1]
    for e, adv in zip(eps, fgsm_images(model, x[:16], y[:16], eps)):
        assert torch.equal(adv, torchattacks.FGSM(model, eps=e)(x[:16], y[:16]))
    assert all(p.grad is None for p in model.parameters())


def test_native_pgd_images_equal_torchattacks_bitwise(trained):
    from robustkit.attacks import pgd_images

    model, x, _, y = trained
    xb, yb = x[:64], y[:64]
    for eps, steps in ((0.03, 1), (0.1, 4)):
        torch.manual_seed(11)
        ref = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps)(xb, yb)
        ours = pgd_images(model, xb, yb, eps, 2.5 * eps / steps, steps, torch.Generator().manual_seed(11))
        assert torch.equal(ours, ref), eps
        assert (ours - xb).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_any_torchattacks_attack_by_name(trained):
    from robustkit.attacks import torchattacks_sweep

    model, x, _, y = trained
    ours = fgsm_sweep(model, x, y, [0.0, 0.05], batch_size=BATCH)
    assert torchattacks_sweep(model, x, y, [0.0, 0.05], "fgsm", batch_size=BATCH) == ours  # case-insensitive
    with pytest.raises(RobustkitError, match="did you mean PGD"):
        torchattacks_sweep(model, x, y, [0.1], "PDG")
    with pytest.raises(RobustkitError, match="no eps budget"):
        torchattacks_sweep(model, x, y, [0.1], "CW")
    with pytest.raises(RobustkitError, match="takes no argument bogus"):
        torchattacks_sweep(model, x, y, [0.1], "PGD", {"bogus": 1})


def test_attack_params_parse():
    from robustkit.attacks import parse_attack_params

    assert parse_attack_params(["steps=20", "norm=Linf", "random_start=false", "alpha=0.01"]) == {
        "steps": 20, "norm": "Linf", "random_start": False, "alpha": 0.01}
    with pytest.raises(RobustkitError, match="KEY=VALUE"):
        parse_attack_params(["steps"])


# ------------------------------------------------------------------- seeding and the torchattacks adapter


class _Recorder(nn.Module):
    """The model, recording every input it sees with gradients off: the sweeps' clean and adversarial forwards."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        if not torch.is_grad_enabled():
            self.seen.append(x.detach().clone())
        return self.model(x)


def test_pgd_each_batch_starts_from_its_own_seeded_draw(trained):
    """pgd_sweep draws the random start of the batch at ``start`` from ``derive_seed("pgd", seed, start)``
    (its docstring): over several batches, every adversarial image it evaluates equals torchattacks.PGD's run
    on that batch after torch.manual_seed of that seed, and the batches do not share one draw."""
    from robustkit.rng import derive_seed

    model, x, _, y = trained
    xs, ys, e, steps, batch = x[:96], y[:96], 0.05, 2, 32
    rec = _Recorder(model)
    pgd_sweep(rec, xs, ys, [e], steps=steps, batch_size=batch, seed=3)
    advs = rec.seen[1::2]   # per batch: the clean forward, then the adversarial one
    assert len(advs) == 3
    for k, start in enumerate(range(0, len(xs), batch)):
        torch.manual_seed(derive_seed("pgd", 3, start))
        ref = torchattacks.PGD(model, eps=e, alpha=2.5 * e / steps, steps=steps)(xs[start:start + batch],
                                                                                   ys[start:start + batch])
        assert torch.equal(advs[k], ref), start


def test_torchattacks_sweep_is_seeded_per_batch_and_leaves_the_callers_rng_alone(trained):
    """torchattacks_sweep seeds the attack per batch from ``derive_seed("torchattacks", seed, start)`` inside a
    forked RNG (its docstring): the images equal torchattacks.PGD's after torch.manual_seed of that seed, and
    the caller's random stream is neither consumed nor reseeded."""
    from robustkit.attacks import torchattacks_sweep
    from robustkit.rng import derive_seed

    model, x, _, y = trained
    xs, ys, e, batch = x[:64], y[:64], 0.05, 32
    rec = _Recorder(model)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    torchattacks_sweep(rec, xs, ys, [e], "PGD", {"steps": 2}, batch_size=batch, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    advs = rec.seen[1::2]
    assert len(advs) == 2
    for k, start in enumerate(range(0, len(xs), batch)):
        torch.manual_seed(derive_seed("torchattacks", 5, start))
        ref = torchattacks.PGD(model, eps=e, steps=2)(xs[start:start + batch], ys[start:start + batch])
        assert torch.equal(advs[k], ref), start


def test_torchattacks_budget_only_from_eps_and_class_count_from_the_model(trained, monkeypatch):
    """The budget comes from --eps, never from --attack-param eps=...; an attack with an ``n_classes`` argument
    gets the model's class count unless the params set it (torchattacks_sweep's docstring)."""
    from robustkit.attacks import check_torchattacks, torchattacks_sweep

    with pytest.raises(RobustkitError, match="give the budget with --eps"):
        check_torchattacks("PGD", {"eps": 0.1})
    model, x, _, y = trained
    seen = []

    def spy(self, images, labels):   # record what the attack object was built with; attack nothing
        seen.append(self.n_target_classes + 1)
        return images

    monkeypatch.setattr(torchattacks.APGDT, "forward", spy)
    torchattacks_sweep(model, x[:8], y[:8], [0.05], "APGDT", batch_size=8, num_classes=7)
    torchattacks_sweep(model, x[:8], y[:8], [0.05], "APGDT", {"n_classes": 4}, batch_size=8, num_classes=7)
    assert seen == [7, 4]
