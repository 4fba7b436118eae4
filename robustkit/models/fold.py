"""Batch norm folded into the convolution before it, for evaluation.

In eval mode a BatchNorm2d is a per-channel affine map with fixed numbers (its running statistics): right after
a convolution it can be folded into that convolution's weights and bias, which removes one pass over every
feature map it normalises. The arithmetic is torch's own (``torch.nn.utils.fusion.fuse_conv_bn_weights``); this
module finds the pairs. The model is traced with torch.fx (robustkit's random-width layers and every convolution
and batch norm kept as single calls), and a pair is folded only where it is safe:

* the convolution's output goes to the batch norm and nowhere else (a ResNet's conv -> bn, a pre-activation
  WRN's conv1 -> bn2; not a WRN block's bn1, which follows a residual sum);
* each of the two modules is called once in the whole forward (a module called twice would change elsewhere);
* the batch norm normalises with running statistics at full width (robustkit's sub-width and masked passes use
  batch statistics: those stay as they are).

A model torch.fx cannot trace (Python control flow on tensor values, an exported program) is returned as it is,
with the reason. The result computes the same function up to float rounding; training it is not meant.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from robustkit.errors import first_line
from robustkit.models.width import SlimBatchNorm2d, _WidthMixin


class _Tracer(fx.Tracer):
    """Convolutions, batch norms and random-width layers as single calls (their own forwards branch on shapes)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d, _WidthMixin)) or super().is_leaf_module(m, qualname)


def _foldable_bn(bn: nn.Module) -> bool:
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        return False
    if isinstance(bn, SlimBatchNorm2d) and (bn.masked_affine is not None or bn.width < 1.0):
        return False
    return True


def _foldable_conv(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv2d or (isinstance(conv, nn.Conv2d) and isinstance(conv, _WidthMixin)
                                       and conv.width >= 1.0)


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A plain Conv2d computing ``bn(conv(x))`` with ``bn``'s running statistics; its weight keeps the memory
    format of ``conv``'s (channels_last stays channels_last: cuDNN would otherwise convert it on every call)."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=True, padding_mode=conv.padding_mode, device=conv.weight.device,
                    dtype=conv.weight.dtype)
    w = conv.weight
    layout = torch.channels_last if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() \
        else torch.contiguous_format
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(w, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    out.weight = nn.Parameter(weight.detach().to(w.dtype).contiguous(memory_format=layout), w.requires_grad)
    out.bias = nn.Parameter(bias.detach().to(w.dtype), w.requires_grad)
    return out.eval()


def traced_copy(model: nn.Module, in_place: bool = False) -> tuple[fx.GraphModule, dict[str, nn.Module],
                                                                    dict[str, int]]:
    """A copy of ``model`` in eval mode traced by torch.fx (:class:`_Tracer`), its modules by name, and how many
    times its forward calls each one. Raises what torch.fx raises on code it cannot trace. ``in_place`` with a
    GraphModule (a copy made here before, e.g. by :func:`fold_batchnorm`): that module itself, not copied nor traced
    again (a WRN-28-2 on 2 cores: ~0.03 s each)."""
    if in_place and isinstance(model, fx.GraphModule):
        gm = model.eval()
    else:
        copied = copy.deepcopy(model).eval()
        gm = fx.GraphModule(copied, _Tracer().trace(copied))
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return gm, dict(gm.named_modules()), calls


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int, str | None]:
    """(model for evaluation with every safe conv -> batch-norm pair folded, pairs folded, why none could be).

    ``model`` itself is left as it was; the result is a copy in eval mode (or ``model``, when it cannot be
    traced or has nothing to fold, with the reason as the third item)."""
    try:
        gm, modules, calls = traced_copy(model)
    except Exception as exc:  # noqa: BLE001  (whatever torch.fx raises on code it cannot trace)
        return model, 0, f"torch.fx cannot trace it ({type(exc).__name__}: {first_line(exc)})"
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _foldable_bn(modules[node.target]) or len(node.args) != 1:
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and _foldable_conv(modules[prev.target])):
            continue
        if len(prev.users) != 1 or calls[prev.target] != 1 or calls[node.target] != 1:
            continue
        conv = _folded_conv(modules[prev.target], modules[node.target])
        parent, _, name = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, conv)
        modules[prev.target] = conv
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    if not folded:
        return model, 0, "no batch norm directly after a convolution"
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm.eval(), folded, None
