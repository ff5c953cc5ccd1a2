"""Export of the tiny random-init nets (one shared export, see conftest.py): files, manifest, structure,
dynamic batch, and the gradient graphs / fused loop re-checked here against torch directly."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import onnx
import pytest

from vaegan.export.validate import TRT_SUPPORTED_OPS, ort_session, structural_problems

from .conftest import trt_missing

CONTRACT = {  # docs/ARTIFACTS.md
    "encoder": (["x"], ["mu", "logvar"]),
    "decoder": (["z"], ["x"]),
    "discriminator": (["x"], ["logit"]),
    "classifier": (["x"], ["logits"]),
    "encoder_vjp": (["x", "v"], ["grad_x"]),
    "decoder_vjp": (["z", "v"], ["grad_z"]),
    "discriminator_grad": (["x"], ["grad_x", "logit"]),
    "purify": (["x", "noise", "steps", "eta", "lam", "momentum"], ["purified", "loss", "z"]),
}
L = 8  # tiny_vaegan_ckpt's latent size


def test_cli_exit_code_and_trt_message(tiny_export):
    res = tiny_export["result"]
    assert "Traceback" not in res.output
    if trt_missing():
        assert res.exit_code == 2, res.output
        assert f"TensorRT engines not built: {trt_missing()}." in " ".join(res.output.split())  # says what is missing
    else:
        assert res.exit_code == 0, res.output
    assert "[x]" not in res.output
    # 12 outputs over the 8 graphs + purify's 3 again on each engine of the runtime's CPU fast path (onnxruntime;
    # OpenVINO when installed, else one line saying so), at batch 1 and 64
    from vaegan.runtime.backend.openvino import openvino_status

    ov_ok, why = openvino_status()
    assert res.output.count("[ok]") == 2 * (12 + 3 + (3 if ov_ok else 0))
    assert res.output.count("[fast path: unrolled T=3, onnxruntime opt all]") == 2 * 3
    if ov_ok:
        assert res.output.count("[fast path: unrolled T=3, OpenVINO CPU]") == 2 * 3
    else:
        assert f"[-] purify [fast path: unrolled T=3, OpenVINO CPU]: not checked ({why})" in res.output


def test_files_and_manifest(tiny_export):
    from vaegan.util import file_sha256
    from vaegan.train.config import PurifyConfig
    from vaegan.train.data import CLASSES

    out, m = tiny_export["out"], tiny_export["manifest"]
    assert m is not None
    assert m["format_version"] == 1
    for key in ("vaegan_version", "torch_version", "onnx_version", "opset", "checkpoint", "classifier_checkpoint",
                "latent_dim", "preprocess", "classes", "purify_defaults", "max_batch", "graphs", "engines"):
        assert key in m, key
    assert m["opset"] == 18 and m["latent_dim"] == L and m["max_batch"] == 64
    assert m["classes"] == list(CLASSES)
    assert m["purify_defaults"] == asdict(PurifyConfig())
    assert m["preprocess"] == {"channels": 1, "height": 28, "width": 28, "mode": "L", "layout": "NCHW",
                               "dtype": "float32", "range": [0.0, 1.0],
                               "normalize": {"mean": [0.286], "std": [0.353]}}
    assert m["checkpoint"]["sha256"] == file_sha256(tiny_export["vaegan"])
    assert m["classifier_checkpoint"]["sha256"] == file_sha256(tiny_export["classifier"])
    assert set(m["graphs"]) == set(CONTRACT)
    for name, (ins, outs) in CONTRACT.items():
        g = m["graphs"][name]
        assert g["file"] == f"{name}.onnx"
        assert g["sha256"] == file_sha256(out / g["file"])
        assert [i["name"] for i in g["inputs"]] == ins
        assert [o["name"] for o in g["outputs"]] == outs
        assert g["tolerance"]["atol"] > 0 and g["tolerance"]["rtol"] > 0
        assert all(v["ok"] for v in g["validation"].values())
        for io in g["inputs"] + g["outputs"]:
            if io["name"] not in ("steps", "eta", "lam", "momentum"):
                assert io["shape"][0] in ("N", "R") and g["dynamic_axes"][io["name"]]["0"] == io["shape"][0]
    fast = {k for k in m["graphs"]["purify"]["validation"] if "fast path" in k}
    from vaegan.runtime.backend.openvino import openvino_status

    from vaegan.runtime.names import FAST_PATH_ENGINE_LABELS as labels

    engines = [labels["onnxruntime"]] + ([labels["openvino"]] if openvino_status()[0] else [])
    assert fast == {f"{o} [fast path: unrolled T={PurifyConfig().steps}, {e}]"
                    for o in ("purified", "loss", "z") for e in engines}
    assert m["graphs"]["purify"]["inputs"][1] == {"name": "noise", "shape": ["R", "N", L], "dtype": "float32"}
    assert m["graphs"]["purify"]["inputs"][2] == {"name": "steps", "shape": [], "dtype": "int64"}
    assert json.loads((out / "manifest.json").read_text()) == m
    if trt_missing():
        assert m["engines"] == {}
        assert not list(out.glob("*.engine"))


@pytest.mark.parametrize("name", list(CONTRACT))
def test_graph_structure(tiny_export, name):
    """Full onnx.checker, inference-only, TensorRT op allowlist, weights as initializers, symbolic batch axes."""
    from vaegan.export.specs import graph_specs

    model = onnx.load(tiny_export["out"] / f"{name}.onnx")
    assert structural_problems(model, graph_specs(L)[name]) == []
    ops = set()

    def walk(g):
        for n in g.node:
            ops.add((n.domain, n.op_type))
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
    walk(model.graph)
    assert all(d in ("", "ai.onnx") for d, _ in ops)
    assert {op for _, op in ops} <= TRT_SUPPORTED_OPS
    assert not any(o.domain == "ai.onnx.preview.training" for o in model.opset_import)
    inits = {t.name for t in model.graph.initializer}
    assert sum(onnx.numpy_helper.to_array(t).size for t in model.graph.initializer) > 100  # weights are initializers
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            assert n.input[1] in inits
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            assert dims[0].dim_param in ("N", "R"), f"{vi.name} batch axis is fixed: {dims[0]}"


def test_purify_is_a_for_loop_independent_of_T(tiny_export):
    model = onnx.load(tiny_export["out"] / "purify.onnx")
    loops = [n for n in model.graph.node if n.op_type == "Loop"]
    assert len(loops) == 1
    loop = loops[0]
    assert loop.input[0] == "steps"  # trip count = the runtime input
    # no condition input: ONNX's for-loop form (TensorRT's Loop importer then adds only a COUNT trip limit)
    assert len(loop.input) == 4 and loop.input[1] == ""
    body = loop.attribute[0].g
    # the body passes its condition through unchanged
    assert body.output[0].name in [o for n in body.node if n.op_type == "Identity" and n.input[0] == body.input[1].name
                                   for o in n.output]


@pytest.mark.parametrize("steps", [0, 3])
def test_unrolled_loop_is_the_same_function(tiny_export, tmp_path, steps):
    """unroll_loop (the runtime's CPU fast path): no Loop, no 'steps' input, the same outputs as the Loop at T."""
    from vaegan.export.rewrite import unroll_loop

    model = onnx.load(tiny_export["out"] / "purify.onnx")
    un = unroll_loop(model, steps)
    onnx.checker.check_model(un, full_check=True)
    assert not any(n.op_type == "Loop" for n in un.graph.node)
    assert "steps" not in [i.name for i in un.graph.input]
    onnx.save(un, tmp_path / "u.onnx")
    rng = np.random.default_rng(0)
    feed = {"x": rng.random((5, 1, 28, 28), dtype=np.float32),
            "noise": rng.standard_normal((2, 5, 8), dtype=np.float32), "eta": np.array(0.05, np.float32),
            "lam": np.array(1.0, np.float32), "momentum": np.array(0.5, np.float32)}
    ref = ort_session(tiny_export["out"] / "purify.onnx").run(None, {**feed, "steps": np.array(steps, np.int64)})
    got = ort_session(tmp_path / "u.onnx").run(None, feed)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one Loop"):
        unroll_loop(un, 2)


def test_bound_settings_are_the_same_function(tiny_export, tmp_path):
    """bind_inputs (the fast path's eta, lam, momentum as constants): those inputs are gone, and the graph computes
    what the unbound one computes when fed the same values; an unknown or non-scalar input is refused."""
    from vaegan.export.rewrite import unroll_loop
    from vaegan.runtime.backend.onnxrt.unroll import bind_inputs

    un = unroll_loop(onnx.load(tiny_export["out"] / "purify.onnx"), 2)
    values = {"eta": 0.05, "lam": 3.0, "momentum": 0.5}
    bound = bind_inputs(un, values)
    onnx.checker.check_model(bound, full_check=True)
    assert [i.name for i in bound.graph.input] == ["x", "noise"]
    assert [i.name for i in un.graph.input] == ["x", "noise", "eta", "lam", "momentum"]  # the input is not changed
    onnx.save(un, tmp_path / "u.onnx")
    onnx.save(bound, tmp_path / "b.onnx")
    rng = np.random.default_rng(1)
    feed = {"x": rng.random((4, 1, 28, 28), dtype=np.float32), "noise": np.zeros((1, 4, 8), np.float32)}
    ref = ort_session(tmp_path / "u.onnx").run(None, {**feed, **{k: np.array(v, np.float32) for k, v in values.items()}})
    got = ort_session(tmp_path / "b.onnx").run(None, feed)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    other = ort_session(tmp_path / "u.onnx").run(None, {**feed, "eta": np.array(0.5, np.float32),
                                                        "lam": np.array(3.0, np.float32),
                                                        "momentum": np.array(0.5, np.float32)})
    assert np.abs(other[0] - got[0]).max() > 1e-4  # eta matters: the bound value is the one used
    own = unroll_loop(onnx.load(tiny_export["out"] / "purify.onnx"), 2)
    assert bind_inputs(own, values, inplace=True) is own and [i.name for i in own.graph.input] == ["x", "noise"]
    with pytest.raises(ValueError, match="no input 'alpha'"):
        bind_inputs(un, {"alpha": 1.0})
    with pytest.raises(ValueError, match="'x' is not a float32 scalar"):
        bind_inputs(un, {"x": 1.0})


def _torch_nets(ckpt):
    from vaegan.train.checkpoint import load_model

    return load_model(ckpt, "vaegan")[0]


def test_gradient_graphs_match_autograd(tiny_export):
    """Independent of the exporter's own validation: ORT vs torch.autograd.grad on the unfolded checkpoint."""
    import torch
    import torch.nn.functional as F

    vg = _torch_nets(tiny_export["vaegan"])
    out = tiny_export["out"]
    g = torch.Generator().manual_seed(123)
    for n in (1, 5):
        x = torch.rand(n, 1, 28, 28, generator=g)
        z = torch.randn(n, L, generator=g)
        v_l = torch.randn(n, L, generator=g)
        v_img = torch.randn(n, 1, 28, 28, generator=g)

        xg = x.clone().requires_grad_(True)
        want, = torch.autograd.grad(vg.encoder(xg)[0], xg, v_l)
        got, = ort_session(out / "encoder_vjp.onnx").run(None, {"x": x.numpy(), "v": v_l.numpy()})
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-4)

        zg = z.clone().requires_grad_(True)
        want, = torch.autograd.grad(vg.decoder(zg), zg, v_img)
        got, = ort_session(out / "decoder_vjp.onnx").run(None, {"z": z.numpy(), "v": v_img.numpy()})
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-4)

        xg = x.clone().requires_grad_(True)
        logit = vg.discriminator(xg)
        want, = torch.autograd.grad(F.logsigmoid(logit).sum(), xg)
        got, got_logit = ort_session(out / "discriminator_grad.onnx").run(None, {"x": x.numpy()})
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6, rtol=1e-4)
        np.testing.assert_allclose(got_logit, logit.detach().numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("steps,restarts,momentum", [(0, 1, 0.0), (1, 1, 0.0), (1, 3, 0.0), (7, 3, 0.5),
                                                     (12, 1, 0.3)])
def test_fused_loop_matches_reference(tiny_export, steps, restarts, momentum):
    import torch

    from vaegan.train.config import PurifyConfig
    from vaegan.train.purifier import purify, restart_noise

    vg = _torch_nets(tiny_export["vaegan"])
    sess = ort_session(tiny_export["out"] / "purify.onnx")
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    cfg = PurifyConfig(steps=steps, restarts=restarts, momentum=momentum, eta=0.05, lam=0.7, seed=3)
    noise = restart_noise(cfg, 6, L)
    with torch.no_grad():
        ref = purify(vg, x, cfg, noise=noise)
    purified, loss, z = sess.run(None, {"x": x.numpy(), "noise": noise.numpy(), "steps": np.array(steps, np.int64),
                                        "eta": np.array(cfg.eta, np.float32), "lam": np.array(cfg.lam, np.float32),
                                        "momentum": np.array(momentum, np.float32)})
    np.testing.assert_allclose(purified, ref.x.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(loss, ref.loss.numpy(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(z, ref.z.numpy(), atol=1e-4, rtol=1e-4)
    if steps == 0 and restarts == 1:  # T = 0 is the VAE's own reconstruction
        np.testing.assert_allclose(purified, vg.reconstruct(x).detach().numpy(), atol=1e-5)
