"""``OpenvinoRunner`` (runtime/backend/openvino) on the tiny export's graphs, against onnxruntime on the same file:
the same outputs, one compiled model per input-shape signature (least recently used dropped past ``cache``), feeds
checked like every runner's, concurrent calls on separate infer requests, and a clear error for a bad model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is the optional [openvino] extra (make test installs it)")

from vaegan.runtime.backend.onnxrt import OnnxrtRunner, SessionFromOnnx  # noqa: E402
from vaegan.runtime.backend.openvino import OpenvinoRunner, openvino_status  # noqa: E402
from vaegan.runtime.errors import ArtifactError, FeedError  # noqa: E402


def test_status_says_usable():
    ok, why = openvino_status()
    assert ok and why.startswith("OpenVINO ")


def test_same_outputs_as_onnxruntime_and_one_compile_per_shape(artifacts_dir, fmnist64):
    x, _ = fmnist64
    path = artifacts_dir / "encoder.onnx"
    with OpenvinoRunner(path, threads=2, cache=2) as ov, OnnxrtRunner(SessionFromOnnx(path)) as ort:
        assert [m.name for m in ov.get_input_metadata()] == [m.name for m in ort.get_input_metadata()]
        assert ov.get_input_metadata()[0].shape[0] is None  # the batch dimension stays dynamic in the metadata
        for n in (1, 7, 1, 64):
            got, ref = ov.infer({"x": x[:n]}), ort.infer({"x": x[:n]})
            assert set(got) == set(ref)
            for k in ref:
                assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype
                np.testing.assert_allclose(got[k], ref[k], atol=1e-5)
        shapes = [dict(key)["x"][0] for key in ov.compiled_shapes()]
        assert shapes == [1, 64]  # batch 7 was the least recently used of three: dropped
        first = ov.infer({"x": x[:3]})
        kept = {k: v.copy() for k, v in first.items()}
        second = ov.infer({"x": x[3:6]})  # same shape, other images: the same infer request runs again
        for k in kept:
            np.testing.assert_array_equal(first[k], kept[k])  # outputs are copies, not the request's buffers
            assert np.abs(second[k] - first[k]).max() > 0


def test_feed_is_checked(artifacts_dir):
    with OpenvinoRunner(artifacts_dir / "encoder.onnx") as ov:
        with pytest.raises(FeedError, match="missing input"):
            ov.infer({"y": np.zeros((1, 1, 28, 28), np.float32)})
        with pytest.raises(FeedError, match="dtype float64"):
            ov.infer({"x": np.zeros((1, 1, 28, 28))})


def test_concurrent_calls_match_serial(artifacts_dir, fmnist64):
    x, _ = fmnist64
    with OpenvinoRunner(artifacts_dir / "decoder.onnx", threads=1) as ov:
        name = ov.get_input_metadata()[0].name
        z = np.random.default_rng(0).standard_normal((8, 8, ov.get_input_metadata()[0].shape[1]), dtype=np.float32)
        serial = [ov.infer({name: zi}) for zi in z]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda zi: ov.infer({name: zi}), z))
    for a, b in zip(serial, parallel):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_bad_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    r = OpenvinoRunner(bad)
    with pytest.raises(ArtifactError, match="broken.onnx: OpenVINO cannot read the model: Unable to read the model"):
        r.activate()
    assert not r.is_active


def test_unused_graph_inputs_are_kept(artifacts_dir, fmnist64):
    """The purifier unrolled at T = 0 never reads eta or momentum: OpenVINO drops such inputs, the runner keeps the
    ONNX graph's declared inputs (as onnxruntime does) and gives the fast path's T = 0 output."""
    from vaegan.runtime.purify import fast_path_runner

    from vaegan.runtime.artifacts import load_artifacts

    x, _ = fmnist64
    latent = load_artifacts(artifacts_dir).latent_dim
    feed = {"x": x[:4], "noise": np.zeros((1, 4, latent), np.float32), "eta": np.array(0.1, np.float32),
            "lam": np.array(1.0, np.float32), "momentum": np.array(0.0, np.float32)}
    path = artifacts_dir / "purify.onnx"
    with fast_path_runner(path, 0, "openvino") as ov, fast_path_runner(path, 0, "onnxruntime") as ort:
        assert [m.name for m in ov.get_input_metadata()] == [m.name for m in ort.get_input_metadata()]
        assert {"eta", "momentum"} <= {m.name for m in ov.get_input_metadata()}
        got, ref = ov.infer(feed), ort.infer(feed)
        with pytest.raises(FeedError, match="input 'eta' has dtype float64"):
            ov.infer({**feed, "eta": np.array(0.1)})  # checked although unused
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-4)


def test_shared_inputs_give_the_copying_dispatch_results(artifacts_dir, fmnist64):
    """``share_inputs`` (the default) reads the fed arrays in place: the same outputs as OpenVINO's copying dispatch,
    for contiguous arrays and for strided views (which OpenVINO copies), and the caller's arrays are left as fed."""
    x, _ = fmnist64
    path = artifacts_dir / "encoder.onnx"
    strided = x[:16:2]  # every other image: not C-contiguous
    assert not strided.flags.c_contiguous
    before = x.copy()
    with OpenvinoRunner(path, threads=2) as shared, OpenvinoRunner(path, threads=2, share_inputs=False) as copied:
        assert shared.share_inputs and not copied.share_inputs
        for feed in (x[:8], strided, np.ascontiguousarray(strided)):
            a, b = shared.infer({"x": feed}), copied.infer({"x": feed})
            for k in b:
                np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(x, before)
