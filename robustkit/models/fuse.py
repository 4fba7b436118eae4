"""Convolution + bias (+ a residual) + ReLU as one cuDNN call, for evaluation on CUDA.

On CUDA, a convolution with a bias is two passes over its output (cuDNN's convolution, then torch adds the bias),
and the ReLU after it a third; a residual sum before the ReLU a fourth. Each pass reads and writes a whole feature
map: at batch 1,000 on 32 px images, or batch 256 on 224 px ones, that memory traffic is a large part of a small
network's forward. cuDNN computes ``relu(conv(x) + bias [+ z])`` in one kernel, and torch exposes it as
``torch.cudnn_convolution_relu`` and ``torch.cudnn_convolution_add_relu`` (what TorchScript's frozen-graph
optimisation calls on CUDA). This module finds the places to use them; with the batch norms folded first
(:mod:`robustkit.models.fold`: they become the convolution's bias) a ResNet's every conv -> bn -> relu and
conv -> bn -> (+ shortcut) -> relu is one call, and a pre-activation WRN's conv1 -> bn2 -> relu.

The model is traced with torch.fx as in fold.py, and a pattern is fused only where it is safe: the convolution is
a plain 2-d one with zero padding given as numbers, called once in the forward, and its output (and the sum's)
goes to the next step and nowhere else. Each fused call falls back to the three ordinary ops (the very ops it
replaced, so the same bits) off CUDA, when autograd is recording (fgsm's input gradients), when the residual's
shape is not the output's, under ``--deterministic`` (torch calls the fused ops with cuDNN's deterministic
setting off), and after cuDNN refused it once in this process (one warning). On CUDA the fused
kernel rounds once where the separate ops round after each step: the same function up to float rounding.
"""

from __future__ import annotations

import operator
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from robustkit.errors import first_line
from robustkit.models.fold import _foldable_conv, traced_copy

# The cuDNN ops (module-level, so tests can stand an independent implementation of what they compute in for them)
_CONV_RELU = getattr(torch, "cudnn_convolution_relu", None)
_CONV_ADD_RELU = getattr(torch, "cudnn_convolution_add_relu", None)


class _CudnnFusion:
    """Whether the fused cuDNN calls are still tried in this process (``failed``: why not, after the first refusal)."""
    failed: str | None = None


def _on_cudnn(x: torch.Tensor) -> bool:
    """Where the fused calls run: CUDA tensors (tests open this gate to CPU tensors, with stand-in ops)."""
    return x.is_cuda


class FusedConvReLU(nn.Module):
    """``relu(conv(x))``, or ``relu(conv(x) + z)`` when given a residual ``z``, as one cuDNN call on CUDA."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if _CudnnFusion.failed is None and _on_cudnn(x) and _CONV_RELU is not None and not (
                torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad
                                             or (z is not None and z.requires_grad))) and not (
                torch.backends.cudnn.deterministic):   # (torch calls the fused ops with deterministic off)
            out = self._fused(x, z)
            if out is not None:
                return out
        y = self.conv(x)
        return torch.relu(y if z is None else y + z)

    def _fused(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor | None:
        c = self.conv
        if z is not None and tuple(z.shape) != self._out_shape(x):
            return None   # a residual that broadcasts: the ordinary ops
        # What autocast would have run the convolution in (it does not know these ops)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        w = c.weight.to(dtype)
        b = None if c.bias is None else c.bias.to(dtype)
        try:
            if z is None:
                return _CONV_RELU(x.to(dtype), w, b, c.stride, c.padding, c.dilation, c.groups)
            return _CONV_ADD_RELU(x.to(dtype), w, z.to(dtype), 1.0, b, c.stride, c.padding, c.dilation, c.groups)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001  (a cuDNN without an engine for it: the ordinary ops compute the same)
            _CudnnFusion.failed = f"{type(exc).__name__}: {first_line(exc)}"
            warnings.warn(f"--fuse-conv: cuDNN refused a fused convolution + ReLU ({_CudnnFusion.failed}); using the "
                          "separate ops from now on", RuntimeWarning, stacklevel=3)
            return None

    def _out_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        c = self.conv
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, p, d, k, s in zip(x.shape[2:], c.padding, c.dilation, c.kernel_size, c.stride)]
        return (x.shape[0], c.out_channels, *size)


_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1 and not node.kwargs


def _is_add(node: fx.Node) -> bool:
    two = len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS and two
    return node.op == "call_method" and node.target in ("add", "add_") and two


def _fusable_conv(node, modules: dict, calls: dict) -> bool:
    if not (isinstance(node, fx.Node) and node.op == "call_module" and len(node.users) == 1):
        return False
    conv = modules[node.target]
    return (_foldable_conv(conv) and calls[node.target] == 1 and len(node.args) == 1 and not node.kwargs
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def fuse_conv_relu(model: nn.Module, in_place: bool = False) -> tuple[nn.Module, int, int, str | None]:
    """(model for evaluation with every safe conv -> relu and conv -> add -> relu fused, convolutions fused,
    of which with a residual, why none could be).

    ``model`` itself is left as it was; the result is a copy in eval mode (or ``model``, when it cannot be traced
    or has nothing to fuse, with the reason as the last item). ``in_place``: ``model`` is a GraphModule of one's
    own (what :func:`robustkit.models.fold.fold_batchnorm` returns), changed and returned itself."""
    try:
        gm, modules, calls = traced_copy(model, in_place=in_place)
    except Exception as exc:  # noqa: BLE001  (whatever torch.fx raises on code it cannot trace)
        return model, 0, 0, f"torch.fx cannot trace it ({type(exc).__name__}: {first_line(exc)})"
    fused = with_residual = 0
    for relu in list(gm.graph.nodes):
        if not _is_relu(relu, modules) or not isinstance(relu.args[0], fx.Node):
            continue
        src = relu.args[0]
        if _fusable_conv(src, modules, calls):
            conv, inputs, gone = src, (src.args[0],), [relu, src]
        elif _is_add(src) and len(src.users) == 1:
            pick = [i for i, a in enumerate(src.args) if _fusable_conv(a, modules, calls)]
            if not pick:
                continue
            conv, z = src.args[pick[0]], src.args[1 - pick[0]]
            inputs, gone = (conv.args[0], z), [relu, src, conv]
        else:
            continue
        parent, _, name = conv.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, FusedConvReLU(modules[conv.target]))
        with gm.graph.inserting_before(relu):
            new = gm.graph.call_module(conv.target, inputs)
        relu.replace_all_uses_with(new)   # (where the ReLU was: the conv's input and z both come before it)
        for node in gone:
            gm.graph.erase_node(node)
        fused += 1
        with_residual += len(inputs) == 2
    if not fused:
        return model, 0, 0, "no ReLU directly after a convolution (or a convolution + a sum)"
    gm.graph.lint()
    gm.recompile()
    return gm.eval(), fused, with_residual, None
