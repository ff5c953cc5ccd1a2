"""Speed rewrites of exported graphs (exact up to fp32 summation order; every graph is still validated against
PyTorch after them).

``convtranspose_as_conv``: onnxruntime's CPU ConvTranspose runs one GEMM + col2im per image of the batch, a large
share of the fused purifier's time; its Conv is batched and uses the blocked (NCHWc) kernels. A ConvTranspose with
stride s, kernel K, padding p (group 1, dilation 1) equals a stride-1 Conv at the *input* resolution with s*s*C_out
output channels -- one per output phase (sub-pixel form: out[s*i + r] only sees inputs i + d with
k = r + p - s*d in [0, K)) -- followed by ``DepthToSpace`` (CRD) and a crop. For s > 1 not applied by ``export_all``: it is slower in the A/B of
bench/levers.py (and DepthToSpace is not in validate.TRT_SUPPORTED_OPS); kept for that A/B. Kernel taps a phase does not use are
zero (bench/flops.py counts non-zero taps only). For s = 1 it is just a Conv with the flipped, transposed weight, and
that case *is* applied by ``export_all`` (``max_stride=1``): the input-gradient of G's last Conv (24 -> 1 channels,
3x3, stride 1) is a ConvTranspose with one input channel, which onnxruntime runs far below its Conv speed; as a
Conv it is exact in MACs and faster (docs/benchmarks.md, levers).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ``unroll_loop`` has one definition, in the runtime (its CPU fast path runs it); re-exported for bench/levers.py
from vaegan.runtime.backend.onnxrt.unroll import unroll_loop  # noqa: F401


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _phase_conv(w: np.ndarray, strides, pads, kernel, output_padding):
    """ConvTranspose weight [C_in, C_out, K_h, K_w] -> (conv weight [s_h*s_w*C_out, C_in, Kc_h, Kc_w],
    conv pads [b_h, b_w, e_h, e_w], crop per axis) or None when the rewrite does not apply."""
    cin, cout = w.shape[:2]
    offs, pb, pe, crop = [], [], [], []
    for ax in range(2):
        s, p, k, op = strides[ax], pads[ax], kernel[ax], output_padding[ax]
        if pads[ax] != pads[ax + 2]:
            return None
        d = sorted({dd for r in range(s) for dd in range(-k, k + 1) if 0 <= r + p - s * dd < k})
        if not d:
            return None
        c = k + op - 2 * p                   # H_out = (H_in - 1) * s + c
        q = math.ceil(c / s)                 # phase outputs per axis: H_in - 1 + q
        kc = d[-1] - d[0] + 1
        b, e = -d[0], q - 2 + kc + d[0]
        if b < 0 or e < 0:
            return None
        offs.append(d)
        pb.append(b)
        pe.append(e)
        crop.append(q * s - c)
    sh, sw = strides
    kch, kcw = offs[0][-1] - offs[0][0] + 1, offs[1][-1] - offs[1][0] + 1
    wc = np.zeros((cout * sh * sw, cin, kch, kcw), dtype=w.dtype)
    for rh in range(sh):
        for rw in range(sw):
            rows = np.arange(cout) * sh * sw + rh * sw + rw
            for dh in offs[0]:
                kh = rh + pads[0] - sh * dh
                if not 0 <= kh < kernel[0]:
                    continue
                for dw in offs[1]:
                    kw = rw + pads[1] - sw * dw
                    if not 0 <= kw < kernel[1]:
                        continue
                    wc[rows, :, dh - offs[0][0], dw - offs[1][0]] = w[:, :, kh, kw].T
    return wc, [pb[0], pb[1], pe[0], pe[1]], crop


def _rewrite_graph(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], new_inits: list, counter: list,
                   max_stride: int | None = None) -> None:
    out_nodes = []
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rewrite_graph(a.g, inits, new_inits, counter, max_stride)
        if n.op_type != "ConvTranspose" or n.input[1] not in inits:
            out_nodes.append(n)
            continue
        at = _attrs(n)
        w = numpy_helper.to_array(inits[n.input[1]])
        kernel = list(at.get("kernel_shape", w.shape[2:]))
        strides = list(at.get("strides", [1, 1]))
        pads = list(at.get("pads", [0, 0, 0, 0]))
        op = list(at.get("output_padding", [0, 0]))
        ok = (w.ndim == 4 and at.get("group", 1) == 1 and list(at.get("dilations", [1, 1])) == [1, 1]
              and at.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") and "output_shape" not in at
              and strides[0] == strides[1] and (max_stride is None or strides[0] <= max_stride))
        res = _phase_conv(w, strides, pads, kernel, op) if ok else None
        if res is None:
            out_nodes.append(n)
            continue
        wc, cpads, crop = res
        counter[0] += 1
        base = f"{n.name or 'convtranspose'}/as_conv{counter[0]}"
        wname = f"{base}/weight"
        new_inits.append(numpy_helper.from_array(wc, wname))
        inputs = [n.input[0], wname]
        s = strides[0]
        if len(n.input) > 2 and n.input[2]:
            if n.input[2] not in inits:
                out_nodes.append(n)
                new_inits.pop()
                continue
            b = numpy_helper.to_array(inits[n.input[2]])
            bname = f"{base}/bias"
            new_inits.append(numpy_helper.from_array(np.repeat(b, s * s).astype(b.dtype), bname))
            inputs.append(bname)
        y = n.output[0]
        conv_out = y if (s == 1 and not any(crop)) else f"{base}/phases"
        out_nodes.append(helper.make_node("Conv", inputs, [conv_out], name=f"{base}/conv",
                                          kernel_shape=list(wc.shape[2:]), pads=cpads, strides=[1, 1]))
        cur = conv_out
        if s > 1:
            d2s = y if not any(crop) else f"{base}/d2s"
            out_nodes.append(helper.make_node("DepthToSpace", [cur], [d2s], name=f"{base}/d2s", blocksize=s,
                                              mode="CRD"))
            cur = d2s
        if any(crop):
            names = [f"{base}/{k}" for k in ("starts", "ends", "axes")]
            new_inits += [numpy_helper.from_array(np.array([0, 0], np.int64), names[0]),
                          numpy_helper.from_array(np.array([-c if c else np.iinfo(np.int64).max for c in crop],
                                                           np.int64), names[1]),
                          numpy_helper.from_array(np.array([2, 3], np.int64), names[2])]
            out_nodes.append(helper.make_node("Slice", [cur] + names, [y], name=f"{base}/crop"))
    del graph.node[:]
    graph.node.extend(out_nodes)


def convtranspose_as_conv(model: onnx.ModelProto, max_stride: int | None = None) -> onnx.ModelProto:
    """Rewrite every ConvTranspose with an initializer weight (also inside Loop bodies) as Conv + DepthToSpace
    (+ Slice); see the module doc. ``max_stride``: only those with stride <= it (1: the stride-1 ones, which become
    a plain Conv with no zero taps). Initializers no longer used are dropped."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new: list = []
    _rewrite_graph(g, inits, new, [0], max_stride)
    g.initializer.extend(new)
    used = set()

    def walk(gr):
        for n in gr.node:
            used.update(n.input)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
    walk(g)
    used.update(o.name for o in g.output)
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model
