"""Random-width WideResNet: shapes, channel selection, BatchNorm statistics, registry errors."""

import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize("name", ["resnet50", "wrn-27-2", "wrn-28", "wrn-4-1"])  # wrn-4: N = 0 blocks
def test_unknown_or_malformed_arch_is_a_clear_error(name):
    with pytest.raises(RobustkitError, match="architecture"):
        create_model(name, num_classes=10)


def _reference_wrn_eval(model, x, n):
    """WRN-(6n+4)-K in eval mode written out from the paper (Zagoruyko & Komodakis 2016): 3x3 stem conv; three
    groups of n pre-activation basic blocks, the first block of each group with stride 1, 2, 2 (BN-ReLU ->
    conv3x3 (stride) -> BN-ReLU -> [dropout: identity in eval] -> conv3x3, plus the identity or, where the shape
    changes, a 1x1 strided projection of the BN-ReLU'd input); BN-ReLU, global average pooling, linear. Reads
    only the weights from ``model``; every stride and activation is this function's own."""
    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.conv2d((x - model.mean) / model.std, model.stem.weight, padding=1)
    blocks = iter(model.blocks)
    for group_stride in (1, 2, 2):
        for i in range(n):
            b = next(blocks)
            stride = group_stride if i == 0 else 1
            o = F.relu(bn(b.bn1, h))
            y = F.conv2d(o, b.conv1.weight, stride=stride, padding=1)
            y = F.conv2d(F.relu(bn(b.bn2, y)), b.conv2.weight, padding=1)
            assert (b.shortcut is None) == (stride == 1 and h.shape[1] == y.shape[1])
            h = y + (h if b.shortcut is None else F.conv2d(o, b.shortcut.weight, stride=stride))
    assert next(blocks, None) is None
    h = F.relu(bn(model.bn, h))
    return F.linear(h.mean((2, 3)), model.fc.weight, model.fc.bias)


@pytest.mark.parametrize("depth, k", [(16, 2), (10, 1)])
def test_wrn_is_the_papers_pre_activation_network(depth, k):
    """Structure and forward of WRN-D-K against the paper's definition written out independently (above): group
    widths 16K, 32K, 64K, strides 1, 2, 2 on the first block of a group only, pre-activation order, projection
    shortcuts on the activated input; dropout between the convolutions is off in eval mode."""
    model = tiny(drop_rate=0.3) if depth == 10 else create_model(f"wrn-{depth}-{k}", num_classes=10, drop_rate=0.3)
    with torch.no_grad():   # non-trivial statistics and affines: a missing BN or ReLU must show
        for m in model.modules():
            if isinstance(m, SlimBatchNorm2d):
                m.running_mean.normal_(0.0, 0.3), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0.0, 0.3)
    model.eval()
    n = (depth - 4) // 6
    assert len(model.blocks) == 3 * n
    assert [b.conv2.out_channels for b in model.blocks] == [w * k for w in (16, 32, 64) for _ in range(n)]
    assert model.stem.out_channels == 16 and model.fc.in_features == 64 * k
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_wrn_eval(model, x, n), rtol=1e-4, atol=1e-5)


def test_convolutions_start_as_in_the_wrn_code_he_normal_over_fan_out():
    """The GradAug authors' WRN initialisation (taoyang1122/GradAug, models/wideresnet_randwidth.py: He-normal
    with mode fan_out, ReLU gain): conv weights ~ N(0, 2 / (k * k * out_channels)). Checked where fan-out and
    fan-in differ (stem, group transitions, shortcuts), so fan-in would not pass; a fixed seed keeps the
    estimate fixed."""
    torch.manual_seed(0)
    model = create_model("wrn-16-4", num_classes=10)
    checked = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.in_channels != m.out_channels:
            expected = (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5
            assert abs(float(m.weight.detach().std()) / expected - 1) < 0.15, m
            checked += 1
    assert checked >= 6


def test_at_width_restores_full_width_when_the_block_raises():
    """at_width: full width after the block, also when it ends with an error (a failed step must not leave the
    model a sub-network for what runs next, e.g. evaluation or the checkpoint)."""
    model = tiny()
    with pytest.raises(RuntimeError, match="boom"):
        with at_width(model, 0.5):
            raise RuntimeError("boom")
    assert all(m.width == 1.0 for m in model.modules() if hasattr(m, "width"))


# ------------------------------------------------------------------------------------- a checkpoint's model
def _checkpoint_data(model, arch="wrn-10-1", **arch_kwargs):
    """As torch.load gives a checkpoint back: tensors of their own (not ``model``'s)."""
    return {"arch": arch, "arch_kwargs": {"num_classes": 10, **arch_kwargs},
            "model": {k: v.clone() for k, v in model.state_dict().items()}}


def test_a_checkpoints_model_holds_its_weights_on_memory_of_its_own():
    """build_model makes the model without memory (meta) and assigns it copies of the checkpoint's tensors: every
    parameter and buffer equals the checkpoint's, and changing the model changes nothing in the loaded data (a second
    build from it, as a model source makes, gets the weights as saved)."""
    from robustkit.checkpoint import build_model

    saved = tiny()
    saved.bn.running_mean.uniform_()   # buffers too: not their initial values
    data = _checkpoint_data(saved)
    model = build_model(data, torch.device("cpu"))
    state = model.state_dict()
    assert state.keys() == data["model"].keys()
    assert all(torch.equal(state[k], v) and not state[k].is_meta for k, v in data["model"].items())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.bn.running_mean.zero_()
    assert all(torch.equal(data["model"][k], v) for k, v in saved.state_dict().items())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(build_model(data, torch.device("cpu"))(x), saved.eval()(x))


def test_a_model_with_a_tensor_outside_its_state_dict_is_built_the_ordinary_way(monkeypatch):
    """A non-persistent buffer is not in the checkpoint, so a meta build could not give it a value: build_model then
    makes the model as before (allocated, initialised, then loaded), and the buffer has its value."""
    import robustkit.models as models
    from robustkit.checkpoint import build_model

    real = models.create_model

    def with_a_table(name, **kw):
        model = real(name, **kw)
        model.register_buffer("table", torch.arange(4.0), persistent=False)
        return model

    monkeypatch.setattr(models, "create_model", with_a_table)
    saved = tiny()
    model = build_model(_checkpoint_data(saved), torch.device("cpu"))
    assert torch.equal(model.table, torch.arange(4.0))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.state_dict().items())


def test_create_model_and_check_arch_refuse_the_same_bad_arguments():
    """create_model no longer builds the architecture twice (check_arch's meta build first): its errors are still
    check_arch's, one line each."""
    from robustkit.models import check_arch

    for bad in ("wrn-27-2", "resnet-9"):
        with pytest.raises(RobustkitError) as a:
            check_arch(bad)
        with pytest.raises(RobustkitError) as b:
            create_model(bad)
        assert str(a.value) == str(b.value)
    with pytest.raises(RobustkitError) as c:
        create_model("wrn-28-2-shakedrop-1.5")
    assert "ShakeDrop p_L must be in [0, 1]" in str(c.value) and "e.g. wrn-28-2" in str(c.value)
