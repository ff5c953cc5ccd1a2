"""The runner interface: activation, feed checks, timing, explicit providers; TensorRT skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from vaegan.runtime.backend.onnxrt import OnnxrtRunner, SessionFromOnnx, available_providers, resolve_providers
from vaegan.runtime.errors import BackendUnavailableError, FeedError


def test_runner_context_manager_and_timing(artifacts_dir):
    runner = OnnxrtRunner(SessionFromOnnx(artifacts_dir / "decoder.onnx", providers=["cpu"]))
    assert not runner.is_active
    assert runner.last_inference_time() is None
    with runner:
        assert runner.is_active
        meta = {m.name: m for m in runner.get_input_metadata()}
        assert set(meta) == {"z"} and meta["z"].dtype == np.float32
        latent = meta["z"].shape[1]
        out = runner.infer({"z": np.zeros((3, latent), np.float32)})
        assert set(out) == {"x"} and out["x"].shape == (3, 1, 28, 28)
        assert runner.last_inference_time() > 0
    assert not runner.is_active
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer({"z": np.zeros((1, latent), np.float32)})


def test_infer_checks_names_dtypes_shapes(artifacts_dir):
    with OnnxrtRunner(SessionFromOnnx(artifacts_dir / "decoder_vjp.onnx")) as r:
        latent = r.get_input_metadata()[0].shape[1]
        z = np.zeros((2, latent), np.float32)
        v = np.zeros((2, 1, 28, 28), np.float32)
        assert r.infer({"z": z, "v": v})["grad_z"].shape == (2, latent)
        with pytest.raises(FeedError, match=r"missing input\(s\) \['v'\].*Got \{z: float32\[2, \d+\]\}"):
            r.infer({"z": z})
        with pytest.raises(FeedError, match=r"unexpected input\(s\) \['w'\]"):
            r.infer({"z": z, "v": v, "w": v})
        with pytest.raises(FeedError, match=r"input 'v' has dtype float64, expected float32"):
            r.infer({"z": z, "v": v.astype(np.float64)})
        with pytest.raises(FeedError, match=r"input 'v' has shape \[2, 1, 27, 28\]: dimension 2 is 27, expected 28"):
            r.infer({"z": z, "v": np.zeros((2, 1, 27, 28), np.float32)})
        with pytest.raises(FeedError, match=r"input 'z' has rank 1 .* expected rank 2"):
            r.infer({"z": z[0], "v": v})
        with pytest.raises(FeedError, match=r"input 'z' is a list, expected a numpy array"):
            r.infer({"z": z.tolist(), "v": v})
        # infer_declared: entries the graph does not declare are left out; the declared ones are checked as ever
        np.testing.assert_array_equal(r.infer_declared({"z": z, "v": v, "w": v})["grad_z"],
                                      r.infer({"z": z, "v": v})["grad_z"])
        with pytest.raises(FeedError, match=r"missing input\(s\) \['v'\]"):
            r.infer_declared({"z": z, "w": v})
        with pytest.raises(FeedError, match=r"input 'v' has dtype float64, expected float32"):
            r.infer_declared({"z": z, "v": v.astype(np.float64)})


def test_missing_provider_is_an_error_listing_available():
    assert "CPUExecutionProvider" in available_providers()
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available_providers():
        with pytest.raises(BackendUnavailableError, match=r"'cuda' \(CUDAExecutionProvider\) is not available.*available: .*cpu"):
            resolve_providers(["cuda"])
    with pytest.raises(BackendUnavailableError, match=r"unknown execution provider 'tpu'.*choose from: cpu, cuda, tensorrt"):
        resolve_providers("tpu")


def test_session_loader_is_lazy(tmp_path):
    loader = SessionFromOnnx(tmp_path / "nothing.onnx")  # building the loader touches nothing
    with pytest.raises(FileNotFoundError, match="nothing.onnx: ONNX file not found"):
        loader()


def _has_trt() -> bool:
    from vaegan.runtime.backend.trt import trt_status

    return trt_status()[0]


needs_trt = pytest.mark.skipif(not _has_trt(), reason="needs an NVIDIA GPU and the tensorrt package")


def _cuda_python_reason() -> str | None:
    """None when cuda-python imports and sees a GPU, else why not (the half of the TensorRT path without TensorRT)."""
    from vaegan.runtime.backend.trt.cuda import cudart, device_count
    from vaegan.runtime.errors import BackendUnavailableError

    try:
        cudart()
    except BackendUnavailableError as e:
        return str(e)
    return None if device_count() > 0 else "cuda-python sees no CUDA device"


@pytest.mark.skipif(_cuda_python_reason() is not None, reason=f"needs cuda-python and a GPU: {_cuda_python_reason()}")
def test_device_buffer_round_trip_through_cuda_python():
    """The TensorRT runner's device buffers (grow on demand, never shrink) and ``check`` over cuda-python."""
    from vaegan.runtime.backend.trt.cuda import DeviceBuffer, check, cudart, device_count

    rt = cudart()
    a = np.arange(4096, dtype=np.float32)
    buf = DeviceBuffer()
    ptr = buf.ensure(a.nbytes)
    assert ptr and buf.nbytes == a.nbytes
    check(rt.cudaMemcpy(ptr, a.ctypes.data, a.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
    assert buf.ensure(a.nbytes // 2) == ptr  # smaller request: same allocation
    out = np.zeros_like(a)
    check(rt.cudaMemcpy(out.ctypes.data, ptr, a.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
    np.testing.assert_array_equal(out, a)
    bigger = buf.ensure(2 * a.nbytes)  # grows: a new allocation
    assert buf.nbytes == 2 * a.nbytes and bigger
    buf.free()
    assert buf.ptr == 0 and buf.nbytes == 0
    with pytest.raises(RuntimeError, match="CUDA error cudaErrorInvalidDevice"):
        check(rt.cudaSetDevice(device_count() + 7))


def test_trt_status_says_why_when_unusable():
    from vaegan.runtime.backend.trt import trt_status

    ok, why = trt_status()
    assert isinstance(ok, bool) and why
    if not ok:
        assert "pip install 'vaegan[gpu]'" in why or "no CUDA device" in why


@pytest.mark.gpu
@needs_trt
def test_trt_runner_matches_onnxrt(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, fmnist64):
    from vaegan.export import export_all
    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.backend.trt import EngineFromPath, TrtRunner

    export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path, trt=True)
    arts = load_artifacts(tmp_path)
    x = fmnist64[0][:16]
    with TrtRunner(EngineFromPath(arts.engine_path("purify"))) as trt_r, \
            OnnxrtRunner(SessionFromOnnx(arts.path("purify"))) as ort_r:
        feed = {"x": x, "noise": np.zeros((1, 16, arts.latent_dim), np.float32),
                "steps": np.array(5, np.int64), "eta": np.array(0.02, np.float32),
                "lam": np.array(1.0, np.float32), "momentum": np.array(0.0, np.float32)}
        a, b = trt_r.infer(feed), ort_r.infer(feed)
        for _ in range(3):  # replays of the captured CUDA graph give the same result
            np.testing.assert_allclose(trt_r.infer(feed)["purified"], a["purified"], atol=0)
        np.testing.assert_allclose(a["purified"], b["purified"], atol=1e-3)
        with pytest.raises(FeedError, match="input 'x' has dtype float64"):
            trt_r.infer({**feed, "x": x.astype(np.float64)})


@pytest.mark.gpu
@needs_trt
def test_trt_backend_end_to_end(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, frames_dir):
    from click.testing import CliRunner

    from vaegan.export import export_all
    from vaegan.runtime.cli import main

    export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path / "a", trt=True)
    res = CliRunner().invoke(main, ["--input", str(frames_dir), "--artifacts", str(tmp_path / "a"),
                                    "--out", str(tmp_path / "o"), "--backend", "trt", "--quiet"])
    assert res.exit_code == 0, res.output


def test_engine_profile_bounds_are_checked_before_the_engine_runs(artifacts_dir, fmnist64):
    """A TensorRT purify engine accepts T and R only within its optimisation profile (manifest ``steps_profile`` /
    ``restarts_profile``); the purifier refuses larger ones with a clear error instead of a failed enqueue. The
    engine is stood in for by the onnxruntime runner of the same graph: the check is the purifier's, not TensorRT's."""
    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.errors import RuntimeUsageError
    from vaegan.runtime.purify import GraphPurifier, PurifyParams, engine_limits, ort_runner

    arts = load_artifacts(artifacts_dir)
    arts.manifest = {**arts.manifest, "engines": {"purify": {"steps_profile": {"min": 0, "opt": 3, "max": 4},
                                                             "restarts_profile": {"min": 1, "opt": 1, "max": 2}}}}
    params = PurifyParams.from_manifest(arts, steps=4, restarts=2)
    x = fmnist64[0][:3]
    with GraphPurifier(arts, params, ort_runner(arts, "purify", ("cpu",), 1, False), "trt",
                       limits=engine_limits(arts)) as p:
        assert p.limits == {"steps": 4, "restarts": 2}
        out = p.purify(x)  # at the profile's maximum: runs
        assert out.purified.shape == x.shape
        with pytest.raises(RuntimeUsageError, match=r"trt: steps 5 is above the engine's profile maximum \(4\)"):
            p.purify(x, params=PurifyParams.from_manifest(arts, steps=5, restarts=1))
        with pytest.raises(RuntimeUsageError, match=r"trt: restarts 3 is above the engine's profile maximum \(2\)"):
            p.purify(x, params=PurifyParams.from_manifest(arts, steps=1, restarts=3))
    with GraphPurifier(arts, params, ort_runner(arts, "purify", ("cpu",), 1, False), "fused") as p:
        assert p.limits == {}  # onnxruntime has no profile
        p.purify(x, params=PurifyParams.from_manifest(arts, steps=5, restarts=3))


def test_export_refuses_an_engine_profile_without_the_operating_point(tmp_path, tiny_vaegan_ckpt,
                                                                      tiny_classifier_ckpt):
    """TensorRT rejects a profile whose opt exceeds its max: the export says so up front (before any export work or
    the TensorRT import), whatever machine it runs on."""
    from vaegan.export import export_all
    from vaegan.train.config import PurifyConfig
    from vaegan.train.errors import VaeganError

    for kw, msg in ((dict(max_restarts=1, purify_cfg=PurifyConfig(restarts=2)),
                     r"max-restarts 1 is below the purifier's restarts \(2\)"),
                    (dict(max_restarts=0), "max-restarts must be >= 1"),
                    (dict(purify_cfg=PurifyConfig(steps=1001)), "steps 1001 is above the engines' maximum of 1000")):
        with pytest.raises(VaeganError, match=msg):
            export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path / "a", trt=True, **kw)
        assert not (tmp_path / "a").exists()


def test_fp16_engines_need_tensorrt_10():
    """TensorRT 11 removed the weak-typing flag the fp16 build sets: the export names the version and the fix
    instead of failing inside the build with an AttributeError."""
    from vaegan.export.trt import fp16_supported

    assert fp16_supported("10.13.2.6") == "" and fp16_supported("10.16.1.11") == ""
    for v in ("11.0.0.114", "11.4.0.106"):
        why = fp16_supported(v)
        assert f"found {v}" in why and "tensorrt>=10.13.2,<11" in why
