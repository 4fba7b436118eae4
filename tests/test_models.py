"""Random-width WideResNet: shapes, channel selection, BatchNorm statistics, registry errors."""

import pytest
import torch

from robustkit.errors import RobustkitError
from robustkit.models import at_width, create_model, scaled_channels, set_width
from robustkit.models.width import SlimBatchNorm2d


def tiny(num_classes=10, **kw):
    torch.manual_seed(0)
    return create_model("wrn-10-1", num_classes=num_classes, **kw)


def test_wrn_28_2_has_the_standard_size():
    model = create_model("wrn-28-2", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 1_467_610  # the usual "1.5M" WRN-28-2


@pytest.mark.parametrize("size", [24, 32, 40, 96])
@pytest.mark.parametrize("width", [1.0, 0.8, 0.5])
def test_any_size_and_width_gives_class_logits(size, width):
    model = tiny(num_classes=7)
    with at_width(model, width):
        out = model(torch.rand(3, 3, size, size))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_scaled_channels_rounds_to_nearest_and_keeps_one():
    assert scaled_channels(32, 0.8) == 26        # 25.6 -> 26
    assert scaled_channels(128, 0.8) == 102      # 102.4 -> 102
    assert scaled_channels(16, 1.0) == 16
    assert scaled_channels(1, 0.1) == 1


def test_sub_width_uses_the_first_channels_of_each_layer():
    model = tiny().eval()
    x = torch.rand(2, 3, 32, 32)
    full = model.stem(x)
    with at_width(model, 0.5):
        half = model.stem(x)
    assert half.shape[1] == 8
    torch.testing.assert_close(half, full[:, :8])


def test_sub_width_gradients_touch_only_the_first_channels():
    model = tiny().train()
    with at_width(model, 0.5):
        model(torch.rand(4, 3, 32, 32)).sum().backward()
    g = model.stem.weight.grad
    assert g[:8].abs().sum() > 0 and g[8:].abs().sum() == 0
    assert model.fc.weight.grad[:, model.fc.in_features // 2:].abs().sum() == 0


def test_batchnorm_running_stats_only_at_full_width():
    model = tiny().train()
    bns = [m for m in model.modules() if isinstance(m, SlimBatchNorm2d)]
    before = [(b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone()) for b in bns]
    with at_width(model, 0.75):
        model(torch.rand(8, 3, 32, 32))
    for b, (m, v, n) in zip(bns, before):
        assert torch.equal(b.running_mean, m) and torch.equal(b.running_var, v) and torch.equal(b.num_batches_tracked, n)
    model(torch.rand(8, 3, 32, 32))  # full width updates them
    assert all(not torch.equal(b.running_mean, m) for b, (m, _, _) in zip(bns, before))


def test_sub_width_eval_uses_batch_statistics():
    model = tiny().eval()
    x = torch.rand(8, 3, 32, 32)
    with at_width(model, 0.75):
        a = model(x)
        b = model(torch.cat([x[:4], torch.rand(4, 3, 32, 32)]))
    assert not torch.allclose(a[:4], b[:4])  # batch statistics depend on the batch
    full_a, full_b = model(x), model(torch.cat([x[:4], torch.rand(4, 3, 32, 32)]))
    torch.testing.assert_close(full_a[:4], full_b[:4])  # running statistics do not


def test_model_normalises_inside_with_its_own_mean_std():
    model = tiny(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5)).eval()
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert "mean" in model.state_dict() and "std" in model.state_dict()
    x = torch.rand(2, 3, 32, 32)
    ref = tiny(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
    ref.load_state_dict({**model.state_dict(), "mean": ref.mean, "std": ref.std})
    torch.testing.assert_close(model(x), ref((x - model.mean) / model.std))


def test_set_width_restores_and_validates():
    model = tiny()
    with at_width(model, 0.5):
        pass
    assert model.stem.width == 1.0
    with pytest.raises(ValueError):
        set_width(model, 0.0)


@pytest.mark.parametrize("name", ["resnet50", "wrn-27-2", "wrn-28"])
def test_unknown_or_malformed_arch_is_a_clear_error(name):
    with pytest.raises(RobustkitError, match="architecture"):
        create_model(name, num_classes=10)
