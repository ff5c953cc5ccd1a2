"""The one export mechanism for every graph, forward or input-gradient:

1. fold eval-mode BatchNorm into the neighbouring Conv / ConvTranspose / Linear weights (``fold_batchnorm``);
2. trace the torch function -- which may call ``torch.autograd.grad`` -- to an ATen graph with
   ``make_fx(..., tracing_mode="symbolic")`` and a decomposition table (``DECOMPOSITIONS``) that adds what neither
   torch's core decompositions nor the ONNX function library cover:
   ``aten.convolution_backward`` (input-gradient of a Conv is a ConvTranspose with the same weight and vice versa)
   and an arithmetic ``aten.leaky_relu_backward`` (``g * (slope + (1 - slope) * (x > 0))``, faster than ``Where``
   on ORT-CPU);
3. export the resulting ``GraphModule`` with ``torch.onnx.export(dynamo=True)`` and a symbolic batch dimension;
4. tidy the ONNX graph: inline local functions, fold ``Transpose`` of initializers into the initializer (a
   weight with other uses keeps its original and gets a transposed copy: no Transpose left in the Loop body).

Why this route: exporting a module whose ``forward`` calls ``torch.autograd.grad`` / ``torch.func.vjp`` fails in
``torch.export`` (strict and non-strict) and in the legacy exporter, and ``aot_export_joint_simple`` silently bakes
the trace batch size in. ``make_fx`` records the backward pass as ordinary ATen ops, symbolic in the batch size.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

aten = torch.ops.aten

TRACE_BATCH = 4  # example batch used for tracing (not 0/1, which torch.export would specialise)


# ----------------------------------------------------------------------------------------------- BatchNorm folding

def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale, shift


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.BatchNorm2d) -> None:
    scale, shift = _bn_scale_shift(bn)
    if isinstance(layer, nn.ConvTranspose2d):          # weight: in x out x kh x kw
        layer.weight.mul_(scale.view(1, -1, 1, 1))
    elif isinstance(layer, nn.Conv2d):                 # weight: out x in x kh x kw
        layer.weight.mul_(scale.view(-1, 1, 1, 1))
    else:  # pragma: no cover - guarded by the caller
        raise TypeError(type(layer))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(shift)
    layer.bias = nn.Parameter(bias * scale + shift)


@torch.no_grad()
def _fold_linear_into_channels(fc: nn.Linear, bn: nn.BatchNorm2d) -> None:
    """``bn(fc(z).view(N, C, H, W))``: scale the rows of fc that feed each channel."""
    scale, shift = _bn_scale_shift(bn)
    c = bn.num_features
    per = fc.out_features // c
    rows = scale.repeat_interleave(per)
    fc.weight.mul_(rows.view(-1, 1))
    fc.bias.copy_(fc.bias * rows + shift.repeat_interleave(per))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm2d folded into the preceding Conv/ConvTranspose in its
    Sequential, or -- for the decoder's first BN, which follows ``fc(z).view(...)`` -- into the Linear ``fc``.
    Raises if any BatchNorm is left unfolded."""
    from vaegan.train.models import Decoder

    m = copy.deepcopy(model).eval()
    for mod in list(m.modules()):
        if isinstance(mod, Decoder) and isinstance(mod.net[0], nn.BatchNorm2d):
            _fold_linear_into_channels(mod.fc, mod.net[0])
            mod.net[0] = nn.Identity()
        if isinstance(mod, nn.Sequential):
            for i in range(1, len(mod)):
                if isinstance(mod[i], nn.BatchNorm2d) and isinstance(mod[i - 1], (nn.Conv2d, nn.ConvTranspose2d)):
                    _fold_into(mod[i - 1], mod[i])
                    mod[i] = nn.Identity()
    left = [n for n, x in m.named_modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise RuntimeError(f"BatchNorm layers that could not be folded: {', '.join(left)}")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# ------------------------------------------------------------------------------------------------- decompositions

def _convolution_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
                          groups, output_mask):
    """Input-gradient only (the exported graphs never need weight / bias gradients)."""
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError("export traces input-gradients only; a weight/bias gradient was requested")
    if not output_mask[0]:
        return (None, None, None)
    nsp = inp.dim() - 2
    if not transposed:
        # d conv(x, W) / dx^T g = conv_transpose(g, W); output_padding recovers the input's spatial size
        k = weight.shape[2:]
        op = [int(inp.shape[2 + i]) - ((int(grad_out.shape[2 + i]) - 1) * stride[i] - 2 * padding[i]
                                       + dilation[i] * (int(k[i]) - 1) + 1) for i in range(nsp)]
        gi = aten.convolution(grad_out, weight, None, stride, padding, dilation, True, op, groups)
    else:
        gi = aten.convolution(grad_out, weight, None, stride, padding, dilation, False, [0] * nsp, groups)
    return (gi, None, None)


def _leaky_relu_backward(grad_output, self, negative_slope, self_is_result):
    mask = (self > 0).to(grad_output.dtype)
    return grad_output * (negative_slope + (1.0 - negative_slope) * mask)


def decompositions() -> dict:
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _convolution_backward
    table[aten.leaky_relu_backward.default] = _leaky_relu_backward
    return table


# ------------------------------------------------------------------------------------------------ trace and export

def trace(fn: Callable, example_inputs: Sequence[torch.Tensor]) -> torch.fx.GraphModule:
    """ATen graph of ``fn`` (which may call torch.autograd.grad), symbolic in all input sizes."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(fn, decomposition_table=decompositions(), tracing_mode="symbolic",
                 _allow_non_fake_inputs=True)(*example_inputs)
    return gm.eval()


def to_onnx(fn: Callable, example_inputs: Sequence[torch.Tensor], input_names: Sequence[str],
            output_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]], opset: int) -> onnx.ModelProto:
    """Trace ``fn`` and export it to an in-memory ONNX model with the given names and symbolic axes."""
    gm = trace(fn, example_inputs)
    dims: dict[str, torch.export.Dim] = {}
    dyn = []
    for name, t in zip(input_names, example_inputs):
        axes = dynamic_axes.get(name, {})
        dyn.append({ax: dims.setdefault(sym, torch.export.Dim(sym)) for ax, sym in axes.items()} or None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(gm, tuple(example_inputs), dynamo=True, input_names=list(input_names),
                                 output_names=list(output_names), dynamic_shapes=tuple(dyn),
                                 opset_version=opset, verbose=False, report=False)
    model = prog.model_proto
    model = tidy(model)
    _rename_dims(model, dynamic_axes)
    return model


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline local functions; fold ``Transpose(initializer)`` into a transposed initializer."""
    if len(model.functions):
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    keep = []
    for n in g.node:
        if n.op_type == "Transpose" and n.input[0] in inits:
            # (an initializer with other uses stays; the transposed copy is a new initializer)
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            arr = numpy_helper.to_array(inits[n.input[0]])
            arr = np.ascontiguousarray(np.transpose(arr, perm))
            new = numpy_helper.from_array(arr, n.output[0])
            if uses.get(n.input[0], 0) == 1:
                g.initializer.remove(inits.pop(n.input[0]))
            g.initializer.append(new)
            inits[new.name] = new
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return model


def _rename_dims(model: onnx.ModelProto, dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Give graph inputs / outputs the contract's symbolic names (``N``, ``R``) on their dynamic axes and drop
    intermediate value_info (its exporter-internal symbol names mean nothing to a reader)."""
    for vi in list(model.graph.input) + list(model.graph.output):
        for ax, sym in dynamic_axes.get(vi.name, {}).items():
            d = vi.type.tensor_type.shape.dim[ax]
            if not d.dim_param:
                raise RuntimeError(f"{vi.name}: axis {ax} was exported with the fixed size {d.dim_value}, "
                                   f"expected the symbolic size {sym}")
            d.dim_param = sym
    del model.graph.value_info[:]
