"""FLOP counter for the exported ONNX graphs (the cost model of ``bench/latency.py``).

MACs of Conv / ConvTranspose / Gemm / MatMul, x2 = FLOPs. Shapes come from running the graph once in onnxruntime
with graph optimisation off and the profiler on, so every node is an original ONNX node and a Loop body's nodes
appear once per iteration: the body is counted as many times as it runs. ``purify_flops`` runs ``purify.onnx`` at
T = 0 and T = 1 and extrapolates linearly, ``F(T) = F(0) + T * (F(1) - F(0))`` (exact: the body does the same work
every iteration).

Conv / ConvTranspose MACs count the non-zero weight taps only (``N * H_out * W_out * nnz(W)`` for Conv,
``N * H_in * W_in * nnz(W)`` for ConvTranspose), so a rewrite that pads kernels with zeros (the sub-pixel form of a
strided ConvTranspose, see export/rewrite.py) does not inflate the count: FLOPs are the network's, not the
implementation's. Elementwise ops are not counted (a few % of the MACs here).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _all_nodes(graph):
    import onnx

    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)


def _weight_nnz(model) -> dict[str, int]:
    """Node name -> number of non-zero weight entries, for Conv / ConvTranspose nodes with an initializer weight."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in _all_nodes(model.graph):
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in inits:
            out[n.name] = int(np.count_nonzero(numpy_helper.to_array(inits[n.input[1]])))
    return out


def _shape(entry) -> list[int]:
    return list(next(iter(entry.values())))


def node_macs(op: str, ins: list[list[int]], outs: list[list[int]], nnz: int | None) -> int:
    """MACs of one executed node from its input / output shapes (and non-zero weight taps, where known)."""
    # onnxruntime's profile leaves pre-packed weights out of a node's input shapes, so a weight that is an
    # initializer is counted from the graph (``nnz``) and the shapes are read for a weight computed at run time only
    if op == "Conv":
        o = outs[0]
        per = nnz if nnz is not None else int(np.prod(ins[1]))  # nnz(W) = Cout * Cin/g * kh * kw when dense
        return int(o[0] * np.prod(o[2:]) * per)
    if op == "ConvTranspose":
        x = ins[0]
        per = nnz if nnz is not None else int(np.prod(ins[1]))
        return int(x[0] * np.prod(x[2:]) * per)
    if op == "Gemm":      # out [M, N]; K = |A| / M
        a, o = ins[0], outs[0]
        return int(np.prod(o) * (np.prod(a) // o[0]))
    if op == "MatMul":    # out [..., M, N]; K = A[-1]
        return int(np.prod(outs[0]) * ins[0][-1])
    return 0


def profile_macs(path, feed: dict) -> dict[str, int]:
    """Run ``path`` once on ``feed`` (no graph optimisation, profiler on); MACs per op type, summed over every
    executed node (Loop bodies once per iteration)."""
    import onnx
    import onnxruntime as ort

    nnz = _weight_nnz(onnx.load(str(path)))
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "flops")
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    macs: dict[str, int] = {}
    for e in events:
        args = e.get("args", {})
        op = args.get("op_name")
        if e.get("cat") != "Node" or op not in MAC_OPS or not e["name"].endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        ins = [_shape(s) for s in args["input_type_shape"]]
        outs = [_shape(s) for s in args["output_type_shape"]]
        macs[op] = macs.get(op, 0) + node_macs(op, ins, outs, nnz.get(node))
    return macs


def image_shape(artifacts_dir) -> tuple:
    """(C, H, W) of the artifacts' image contract (manifest ``preprocess``)."""
    from vaegan.runtime.artifacts import load_artifacts

    return load_artifacts(artifacts_dir).contract.shape


def purify_feed(n: int, latent: int, steps: int, image: tuple, restarts: int = 1) -> dict:
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, *image), dtype=np.float32), "noise": np.zeros((restarts, n, latent), np.float32),
            "steps": np.array(steps, np.int64), "eta": np.array(0.02, np.float32),
            "lam": np.array(1.0, np.float32), "momentum": np.array(0.0, np.float32)}


def purify_flops(artifacts_dir, latent: int, batch: int = 1) -> dict:
    """FLOPs of ``purify.onnx`` per call at ``batch`` images, R = 1: ``{"fixed": F(0), "per_step": F(1) - F(0)}``."""
    path = Path(artifacts_dir) / "purify.onnx"
    image = image_shape(artifacts_dir)
    f0 = 2 * sum(profile_macs(path, purify_feed(batch, latent, 0, image=image)).values())
    f1 = 2 * sum(profile_macs(path, purify_feed(batch, latent, 1, image=image)).values())
    return {"fixed": f0, "per_step": f1 - f0}


def graph_flops(path, feed: dict) -> int:
    return 2 * sum(profile_macs(path, feed).values())


def flops_at(cost: dict, steps: int, restarts: int = 1) -> int:
    """FLOPs per image of a purification with ``steps`` steps and ``restarts`` restarts (cost from purify_flops at
    batch 1; every restart is one more row through the seed's encoder-free part)."""
    return int(cost["fixed"] + steps * cost["per_step"]) if restarts == 1 else \
        int(restarts * (cost["fixed"] + steps * cost["per_step"]))


def defense_gan_flops(artifacts_dir, latent: int, steps: int, restarts: int) -> dict:
    """Defense-GAN (lam = 0, random z, no encoder): per restart ``steps`` x (G forward + G vjp) -- the decoder_vjp
    graph computes both -- plus one G forward for the final loss / output. Per image."""
    d = Path(artifacts_dir)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, latent), dtype=np.float32)
    v = rng.standard_normal((1, *image_shape(artifacts_dir)), dtype=np.float32)
    f_vjp = graph_flops(d / "decoder_vjp.onnx", {"z": z, "v": v})
    f_dec = graph_flops(d / "decoder.onnx", {"z": z})
    return {"per_step": f_vjp, "decode": f_dec, "total": int(restarts * (steps * f_vjp + f_dec))}
