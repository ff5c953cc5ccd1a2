"""Export of the shipped weights (skips until models/vaegan.pt and models/classifier.pt land) and TensorRT
engines (skipped without TensorRT / an NVIDIA GPU, with the reason)."""

from __future__ import annotations

import pytest

from .conftest import trt_missing

_MISSING = trt_missing()


@pytest.mark.slow
def test_export_shipped_weights(shipped_export):
    from vaegan.train.checkpoint import default_path, load_raw

    tmp_path, m = shipped_export
    assert m["latent_dim"] == load_raw(default_path("vaegan"))["model_args"]["latent_dim"]
    for name, g in m["graphs"].items():
        assert all(v["ok"] for v in g["validation"].values()), (name, g["validation"])
        assert (tmp_path / g["file"]).exists()


@pytest.mark.gpu
@pytest.mark.skipif(bool(_MISSING), reason=f"TensorRT engines need an NVIDIA GPU and vaegan[gpu]: {_MISSING}")
@pytest.mark.parametrize("fp16", [False, True])
def test_trt_engines_match_onnxruntime(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path, fp16):
    from vaegan.export import export_all

    m = export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path, trt=True, fp16=fp16, echo=lambda s: None)
    precision = "fp16" if fp16 else "fp32"
    assert set(m["engines"]) == set(m["graphs"])
    for name, e in m["engines"].items():
        assert e["file"] == f"{name}.{precision}.engine" and (tmp_path / e["file"]).exists()
        assert e["profile"] == {"min": 1, "opt": 64, "max": 64}
        assert all(v["ok"] for v in e["validation"].values())
    assert (tmp_path / "trt.timing_cache").exists()
