"""GradAug / GradAug-semi steps: the gradient is the sum of its terms; semi really uses unlabeled data."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from robustkit.config import TrainConfig
from robustkit.methods import TRAIN_STEPS, Batch
from robustkit.methods.gradaug import SubNet, gradaug_step, resize, sample_subnets
from robustkit.models import at_width, create_model

CFG = TrainConfig(method="gradaug", subnets=3, min_width=0.8, resolutions=[32, 28, 24])


def model_and_batch(seed=0, n=8, nu=0):
    torch.manual_seed(seed)
    model = create_model("wrn-10-1", num_classes=10).train()
    x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    xu = torch.rand(nu, 3, 32, 32) if nu else None
    return model, Batch(x, y, xu)


def grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def test_sample_subnets_follows_the_recipe():
    g = torch.Generator().manual_seed(1)
    plan = sample_subnets(CFG, g)
    assert len(plan) == 3
    assert min(s.width for s in plan) == 0.8                      # the lower bound is always there
    assert all(0.8 <= s.width <= 1.0 for s in plan)
    assert [s.width for s in plan] == sorted((s.width for s in plan), reverse=True)
    assert all(s.resolution in (32, 28, 24) for s in plan)
    assert plan == sample_subnets(CFG, torch.Generator().manual_seed(1))      # deterministic
    many = [s for i in range(50) for s in sample_subnets(CFG, torch.Generator().manual_seed(i))]
    assert {s.resolution for s in many} == {32, 28, 24}


def test_sub_network_widths_are_uniform_on_min_width_to_one_and_resolutions_uniform():
    """The paper's rule: the smallest sub-network at min_width, the others ~ U(min_width, 1), each input size
    equally likely. A Kolmogorov-Smirnov test of 4,000 drawn widths against U(0.8, 1) (a width squeezed into
    [0.8, 0.9] fails it with p ~ 0), and a chi-square test of the sizes."""
    from scipy import stats

    plans = [sample_subnets(CFG, torch.Generator().manual_seed(i)) for i in range(2000)]
    free = [w for plan in plans for w in sorted(s.width for s in plan)[1:]]   # all but the fixed smallest
    assert len(free) == 4000
    assert stats.kstest(free, stats.uniform(loc=0.8, scale=0.2).cdf).pvalue > 1e-3
    sizes = torch.tensor([s.resolution for plan in plans for s in plan])
    counts = [int((sizes == r).sum()) for r in (32, 28, 24)]
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_gradaug_gradient_is_the_sum_of_its_terms():
    plan = [SubNet(0.9, 28), SubNet(0.8, 24), SubNet(0.85, 32)]
    model, batch = model_and_batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gradaug_step(model, batch, plan)
    total = grads(model)

    # Each term on its own, from the same starting state; targets computed without any graph.
    expected = None
    terms = ["ce"] + list(range(len(plan)))
    for term in terms:
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        if term == "ce":
            F.cross_entropy(model(batch.x), batch.y).backward()
        else:
            with torch.no_grad():
                target = F.softmax(model(batch.x), dim=1)
            model.load_state_dict(state)  # undo the running-stat update of the extra forward
            sub = plan[term]
            with at_width(model, sub.width):
                out = model(resize(batch.x, sub.resolution))
            F.kl_div(F.log_softmax(out, 1), target, reduction="batchmean").backward()
        g = grads(model)
        expected = g if expected is None else {k: expected[k] + g.get(k, 0) for k in expected}
    for k in total:
        torch.testing.assert_close(total[k], expected[k], rtol=1e-4, atol=1e-6)


def test_subnet_terms_add_gradient_beyond_cross_entropy():
    model, batch = model_and_batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    TRAIN_STEPS["baseline"](model, batch, CFG, torch.Generator().manual_seed(0))
    g_base = grads(model)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    logs = TRAIN_STEPS["gradaug"](model, batch, CFG, torch.Generator().manual_seed(0))
    g_aug = grads(model)
    assert logs["kl"] > 0 and torch.isclose(logs["loss"], logs["ce"] + logs["kl"])
    assert not torch.allclose(g_base["fc.weight"], g_aug["fc.weight"])


def test_semi_uses_the_unlabeled_batch():
    cfg = dataclasses.replace(CFG, semi=True)
    plan = [SubNet(0.8, 28), SubNet(0.9, 32)]
    model, batch = model_and_batch(nu=8)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def run(b):
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        gradaug_step(model, b, plan)
        return grads(model)

    g1 = run(batch)
    g2 = run(Batch(batch.x, batch.y, torch.rand_like(batch.xu)))    # other unlabeled images
    g0 = run(Batch(batch.x, batch.y, None))                           # no unlabeled images
    assert not torch.allclose(g1["stem.weight"], g2["stem.weight"])
    assert not torch.allclose(g1["stem.weight"], g0["stem.weight"])
    # Same unlabeled batch -> same gradient (deterministic on CPU).
    torch.testing.assert_close(run(batch)["stem.weight"], g1["stem.weight"])
    assert cfg.method_label == "gradaug-semi"


def test_semi_labels_only_touch_the_labeled_part():
    """Changing the unlabeled images' would-be labels is impossible: CE only sees the labeled batch."""
    model, batch = model_and_batch(nu=4)
    logs = gradaug_step(model, batch, [SubNet(0.8, 32)])
    assert logs["n"] == len(batch.y)


@pytest.mark.parametrize("method", ["baseline", "gradaug"])
def test_steps_report_accuracy_counts(method):
    model, batch = model_and_batch()
    logs = TRAIN_STEPS[method](model, batch, CFG, torch.Generator().manual_seed(0))
    assert 0 <= int(logs["correct"]) <= logs["n"] == 8
