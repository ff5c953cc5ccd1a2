"""Assemble ``purify.onnx`` -- the whole latent-mode purification in one graph -- from graphs exported by the torch
route (encoder, one descent step, the objective, decoder), with onnx's own APIs:

    mu, _   = encoder(x)                                       [N, L]
    z0      = reshape(mu[None] + noise, [R*N, L])              restart-major rows
    xr      = tile(x, [R, 1, 1, 1])
    z, vel  = Loop(M=steps, cond=true) { z, vel = step(z, vel, xr, eta, lam, momentum) }   (for-style Loop)
    loss, xg = objective(z, xr, lam)                           [R*N], [R*N, C, H, W]
    best    = argmin(reshape(loss, [R, N]), axis 0)  (first minimum on ties, as torch.argmin)
    z*      = gather_elements(reshape(z, [R, N, L]), best)     [N, L]
    purified = gather_elements(reshape(xg, [R, N, C*H*W]), best) = G(z*)   (the objective's decode, not a second one)
    loss    = reduce_min(loss, axis 0)

The Loop's body holds the step's nodes; the step's weights live once in the outer graph as initializers (shared
with the objective and decoder when identical), so the file size does not depend on T.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self._by_hash: dict[str, str] = {}
        self._n = 0

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, name: str, arr: np.ndarray) -> str:
        return self.add_init(numpy_helper.from_array(np.asarray(arr), name))

    def add_init(self, t: onnx.TensorProto) -> str:
        """Add an initializer; an identical tensor already present is reused (returns the name to use)."""
        arr = numpy_helper.to_array(t)
        key = hashlib.sha256(arr.dtype.str.encode() + str(arr.shape).encode() + arr.tobytes()).hexdigest()
        if key in self._by_hash:
            return self._by_hash[key]
        self._by_hash[key] = t.name
        self.inits[t.name] = t
        return t.name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(op), **attrs))
        return outs

    def inline(self, model: onnx.ModelProto, prefix: str, inputs: dict[str, str],
               into: list[onnx.NodeProto] | None = None) -> list[str]:
        """Copy ``model``'s nodes (renamed with ``prefix``) into ``into`` (default: the outer graph), its
        initializers into the outer graph; graph inputs are wired to ``inputs``. Returns the output names."""
        g = model.graph
        if len(model.functions):
            raise ValueError(f"{prefix}: local functions must be inlined first")
        names: dict[str, str] = dict(inputs)
        missing = [i.name for i in g.input if i.name not in inputs]
        if missing:
            raise ValueError(f"{prefix}: inputs not wired: {missing}")
        for t in g.initializer:
            t2 = onnx.TensorProto()
            t2.CopyFrom(t)
            t2.name = f"{prefix}/{t.name}"
            names[t.name] = self.add_init(t2)
        dst = self.nodes if into is None else into
        for n in g.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                raise ValueError(f"{prefix}: nested subgraphs are not supported here ({n.op_type})")
            if n.domain not in ("", "ai.onnx"):
                raise ValueError(f"{prefix}: node {n.name} is in domain {n.domain!r}")
            n2 = onnx.NodeProto()
            n2.CopyFrom(n)
            del n2.input[:]
            del n2.output[:]
            n2.input.extend([names.setdefault(i, f"{prefix}/{i}") if i else "" for i in n.input])
            n2.output.extend([names.setdefault(o, f"{prefix}/{o}") if o else "" for o in n.output])
            n2.name = f"{prefix}/{n.name or n.op_type}"
            dst.append(n2)
        return [names.setdefault(o.name, f"{prefix}/{o.name}") for o in g.output]


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def assemble_purify(encoder: onnx.ModelProto, step: onnx.ModelProto, loss: onnx.ModelProto,
                    latent: int, image: tuple) -> onnx.ModelProto:
    """The fused purifier (see module doc). ``loss`` maps (z, x, lam) to (loss, G(z)); ``image`` is the contract's
    (C, H, W). Input / output names follow docs/ARTIFACTS.md."""
    opset = _opset(encoder)
    for m in (step, loss):
        if _opset(m) != opset:
            raise ValueError("all pieces must share one opset")
    L = latent
    b = _Builder()
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64

    # seed: z0 = reshape(mu[None] + noise, [-1, L]); xr = tile(x, [R, 1, 1, 1])
    mu, _logvar = b.inline(encoder, "encoder", {"x": "x"})
    ax0 = b.const("axes0", np.array([0], np.int64))
    mu1, = b.node("Unsqueeze", [mu, ax0])
    z0s, = b.node("Add", [mu1, "noise"])
    z0, = b.node("Reshape", [z0s, b.const("shape_rl", np.array([-1, L], np.int64))])
    nshape, = b.node("Shape", ["noise"])
    r1, = b.node("Slice", [nshape, b.const("s0", np.array([0], np.int64)), b.const("s1", np.array([1], np.int64))])
    n1, = b.node("Slice", [nshape, b.const("s1b", np.array([1], np.int64)), b.const("s2", np.array([2], np.int64))])
    reps, = b.node("Concat", [r1, b.const("ones3", np.array([1, 1, 1], np.int64))], axis=0)
    xr, = b.node("Tile", ["x", reps])
    zshape, = b.node("Shape", [z0])
    vel0, = b.node("ConstantOfShape", [zshape], value=numpy_helper.from_array(np.zeros(1, np.float32)))

    # the loop: body(i, cond, z, vel) -> (cond, z', vel')
    body_nodes: list[onnx.NodeProto] = []
    zb, velb = "loop/z", "loop/vel"
    z_next, vel_next = b.inline(step, "step", {"z": zb, "vel": velb, "x": xr, "eta": "eta", "lam": "lam",
                                              "momentum": "momentum"}, into=body_nodes)
    body_nodes.append(helper.make_node("Identity", ["loop/cond_in"], ["loop/cond_out"], name="loop/cond"))
    body_nodes.append(helper.make_node("Identity", [z_next], ["loop/z_out"], name="loop/z_out"))
    body_nodes.append(helper.make_node("Identity", [vel_next], ["loop/vel_out"], name="loop/vel_out"))
    body = helper.make_graph(
        body_nodes, "purify_step",
        [helper.make_tensor_value_info("loop/i", i64, []), helper.make_tensor_value_info("loop/cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info(zb, f32, ["RN", L]), helper.make_tensor_value_info(velb, f32, ["RN", L])],
        [helper.make_tensor_value_info("loop/cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("loop/z_out", f32, ["RN", L]),
         helper.make_tensor_value_info("loop/vel_out", f32, ["RN", L])],
    )
    # (trip count, "") is ONNX's for-loop form: no condition input, so TensorRT's Loop importer adds only a COUNT
    # trip limit (a condition input, even a constant True, would add a WHILE limit evaluated every iteration)
    zT, _velT = b.node("Loop", ["steps", "", z0, vel0], n_out=2, body=body)

    # restart selection and final decode
    lossv, xg = b.inline(loss, "loss", {"z": zT, "x": xr, "lam": "lam"})
    rn, = b.node("Concat", [r1, n1], axis=0)
    loss_rn, = b.node("Reshape", [lossv, rn])
    best, = b.node("ArgMin", [loss_rn], axis=0, keepdims=1)                     # [1, N]
    loss_min, = b.node("ReduceMin", [loss_rn, ax0], keepdims=0)                 # [N]
    rnl, = b.node("Concat", [r1, n1, b.const("l1", np.array([L], np.int64))], axis=0)
    z_rnl, = b.node("Reshape", [zT, rnl])
    best3, = b.node("Unsqueeze", [best, b.const("axes2", np.array([2], np.int64))])   # [1, N, 1]
    one_nl, = b.node("Concat", [b.const("one", np.array([1], np.int64)), n1,
                                b.const("l1b", np.array([L], np.int64))], axis=0)
    idx, = b.node("Expand", [best3, one_nl])                                   # [1, N, L]
    zsel, = b.node("GatherElements", [z_rnl, idx], axis=0)
    zbest, = b.node("Squeeze", [zsel, ax0])
    c, h, w = (int(d) for d in image)
    pix = b.const("pixels", np.array([c * h * w], np.int64))
    rnp, = b.node("Concat", [r1, n1, pix], axis=0)
    xg_rnp, = b.node("Reshape", [xg, rnp])                                     # [R, N, C*H*W]
    one_np, = b.node("Concat", [b.const("one_p", np.array([1], np.int64)), n1, pix], axis=0)
    idx_p, = b.node("Expand", [best3, one_np])                                 # [1, N, C*H*W]
    xsel, = b.node("GatherElements", [xg_rnp, idx_p], axis=0)
    xbest, = b.node("Reshape", [xsel, b.const("image_shape", np.array([-1, c, h, w], np.int64))])
    b.nodes.append(helper.make_node("Identity", [xbest], ["purified"], name="out/purified"))
    b.nodes.append(helper.make_node("Identity", [loss_min], ["loss"], name="out/loss"))
    b.nodes.append(helper.make_node("Identity", [zbest], ["z"], name="out/z"))

    graph = helper.make_graph(
        b.nodes, "purify",
        [helper.make_tensor_value_info("x", f32, ["N", c, h, w]),
         helper.make_tensor_value_info("noise", f32, ["R", "N", L]),
         helper.make_tensor_value_info("steps", i64, []),
         helper.make_tensor_value_info("eta", f32, []),
         helper.make_tensor_value_info("lam", f32, []),
         helper.make_tensor_value_info("momentum", f32, [])],
        [helper.make_tensor_value_info("purified", f32, ["N", c, h, w]),
         helper.make_tensor_value_info("loss", f32, ["N"]),
         helper.make_tensor_value_info("z", f32, ["N", L])],
        initializer=list(b.inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="vaegan-export", ir_version=encoder.ir_version)
    return model
