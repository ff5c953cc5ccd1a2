"""TensorRT engines from the exported ONNX graphs (TensorRT 10 Python API; device buffers through cuda-python,
no torch): one engine per graph, fp32 (TF32 off) or fp16, one optimisation profile for batch 1..max-batch (and
restarts 1..max-restarts for purify), a shared timing cache (``trt.timing_cache``), and each engine checked
against onnxruntime on real images at batch 1 and max-batch.

Polygraphy-style: ``engine_from_onnx`` builds; each engine is then checked through the runtime's own ``TrtRunner``
(``vaegan.runtime.backend.trt``), the code that runs it in ``vaegan-run``.
Install on a machine with an NVIDIA GPU: ``pip install 'vaegan[gpu]'`` (tensorrt, cuda-python, onnxruntime-gpu).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from vaegan.train.errors import VaeganError

TIMING_CACHE = "trt.timing_cache"
WORKSPACE_BYTES = 1 << 30
MAX_STEPS = 1000            # profile range of purify's ``steps`` if TensorRT treats it as a shape tensor
# engine vs onnxruntime (both fp32 apart from kernel choice / accumulation order; fp16 loses ~3 decimal digits,
# and T descent steps in fp16 may drift further: the loop is checked on the purified image, in [0, 1])
TOL_TRT = {"fp32": {"atol": 1e-4, "rtol": 1e-3}, "fp16": {"atol": 5e-2, "rtol": 5e-2}}


def check_profile(max_restarts: int, purify_cfg) -> None:
    """The engines' optimisation profile must contain the shipped operating point (TensorRT rejects opt > max):
    a one-line VaeganError before any slow work."""
    if max_restarts < 1:
        raise VaeganError(f"max-restarts must be >= 1 (got {max_restarts})")
    if purify_cfg.restarts > max_restarts:
        raise VaeganError(f"max-restarts {max_restarts} is below the purifier's restarts ({purify_cfg.restarts}): "
                          f"the engine's profile must contain them")
    if purify_cfg.steps > MAX_STEPS:
        raise VaeganError(f"steps {purify_cfg.steps} is above the engines' maximum of {MAX_STEPS}")


def fp16_supported(version: str) -> str:
    """'' when this TensorRT version builds fp16 engines the way ``engine_from_onnx`` asks (the weak-typing flag
    ``BuilderFlag.FP16``), else why not. TensorRT 11 removed weak typing: fp16 there means a graph converted to fp16
    types before the build, which vaegan does not do."""
    major = int(version.split(".")[0])
    if major >= 11:
        return (f"--fp16 needs TensorRT 10 (found {version}: TensorRT 11 removed the FP16 builder flag); "
                f"pip install 'tensorrt>=10.13.2,<11' or build fp32 engines")
    return ""


def check_fp16() -> None:
    """``--fp16`` with an installed TensorRT that cannot honour it: a one-line VaeganError before any slow work
    (without TensorRT installed, ``missing_requirements`` says so after the ONNX export instead)."""
    if importlib.util.find_spec("tensorrt") is None:
        return
    import tensorrt as trt

    why = fp16_supported(trt.__version__)
    if why:
        raise VaeganError(why)


def missing_requirements() -> str:
    """'' when engines can be built here, else what is missing (one phrase): the runtime's own check (TensorRT and
    cuda-python importable, a CUDA device visible)."""
    from vaegan.runtime.backend.trt import trt_status

    ok, why = trt_status()
    return "" if ok else why


# -------------------------------------------------------------------------------------------------------- loader

def _dims(io, sizes: dict) -> tuple:
    return tuple(sizes[d] if isinstance(d, str) else d for d in io.shape)


def engine_from_onnx(onnx_path: Path, spec, *, max_batch: int, max_restarts: int, opt_restarts: int,
                     opt_steps: int, fp16: bool, timing_cache: Path, logger) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one optimisation profile."""
    import tensorrt as trt

    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VaeganError(f"{onnx_path.name}: TensorRT cannot parse it: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.clear_flag(trt.BuilderFlag.TF32)   # fp32 means fp32
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # weak typing: TensorRT 10 only (fp16_supported checks it first)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    profile = builder.create_optimization_profile()
    lo = {"N": 1, "R": 1}
    opt = {"N": max_batch, "R": opt_restarts}
    hi = {"N": max_batch, "R": max_restarts}
    by_name = {io.name: io for io in spec.inputs}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        io = by_name[t.name]
        profile.set_shape(t.name, _dims(io, lo), _dims(io, opt), _dims(io, hi))
        if t.is_shape_tensor:  # e.g. the Loop's trip count: give the range of its *values*
            profile.set_shape_input(t.name, [0], [opt_steps], [MAX_STEPS])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VaeganError(f"{onnx_path.name}: TensorRT engine build failed (see the TensorRT log above)")
    timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


# -------------------------------------------------------------------------------------------------------- driver

def build_engines(out_dir: Path, gspecs: dict, *, max_batch: int, max_restarts: int, fp16: bool, images,
                  purify_cfg, echo=print) -> dict:
    """Build, save and check one engine per graph; returns the manifest's ``engines`` section.
    All comparison failures are collected and raised together (ExportValidationError)."""
    import tensorrt as trt
    import torch

    from vaegan.runtime.backend.trt import EngineFromBytes, TrtRunner
    from vaegan.util import file_sha256

    from .specs import dummy_inputs
    from .validate import ExportValidationError, Report, compare, ort_session

    logger = trt.Logger(trt.Logger.WARNING)
    precision = "fp16" if fp16 else "fp32"
    tol = TOL_TRT[precision]
    cache = Path(out_dir) / TIMING_CACHE
    engines: dict = {}
    report = Report()
    gen = torch.Generator().manual_seed(1)
    latent = next(io.shape[1] for io in gspecs["decoder"].inputs if io.name == "z")
    echo(f"building TensorRT {precision} engines (TensorRT {trt.__version__}), checking against onnxruntime:")
    for name, spec in gspecs.items():
        onnx_path = Path(out_dir) / spec.file
        t0 = time.perf_counter()
        blob = engine_from_onnx(onnx_path, spec, max_batch=max_batch, max_restarts=max_restarts,
                                opt_restarts=purify_cfg.restarts, opt_steps=purify_cfg.steps, fp16=fp16,
                                timing_cache=cache, logger=logger)
        eng_path = Path(out_dir) / f"{name}.{precision}.engine"
        eng_path.write_bytes(blob)
        build_s = time.perf_counter() - t0
        sess = ort_session(onnx_path)
        # the runtime's runner, so the engine is checked the way vaegan-run will run it (without CUDA graphs: one
        # call per batch size here)
        with TrtRunner(EngineFromBytes(blob), name=f"trt:{name}", cuda_graph=False) as runner:
            for b in sorted({1, max_batch}):
                feed = {k: v.numpy() for k, v in dummy_inputs(spec, b, latent, images, gen, purify_cfg).items()}
                want = dict(zip([o.name for o in spec.outputs], sess.run(None, feed)))
                got = runner.infer(feed)
                for io in spec.outputs:
                    c = compare(f"{name}[trt]", io.name, got[io.name], want[io.name], tol, b)
                    report.checks.append(c)
                    echo(c.line())
                    if not c.ok:
                        report.failures.append(f"{name} engine.{io.name} (batch {b}): max abs {c.max_abs:.3e}, "
                                               f"max rel {c.max_rel:.3e} vs onnxruntime")
        entry = {"file": eng_path.name, "sha256": file_sha256(eng_path), "precision": precision,
                 "profile": {"min": 1, "opt": max_batch, "max": max_batch}, "build_seconds": round(build_s, 2),
                 "tensorrt_version": trt.__version__, "timing_cache": TIMING_CACHE}
        if any("R" in io.shape for io in spec.inputs):
            entry["restarts_profile"] = {"min": 1, "opt": purify_cfg.restarts, "max": max_restarts}
        if any(io.name == "steps" for io in spec.inputs):
            entry["steps_profile"] = {"min": 0, "opt": purify_cfg.steps, "max": MAX_STEPS}
        engines[name] = entry
    for name, errs in report.summary().items():
        base = name.removesuffix("[trt]")
        engines[base]["validation"] = errs
    if report.failures:
        raise ExportValidationError(f"{len(report.failures)} TensorRT check(s) failed:\n  "
                                    + "\n  ".join(report.failures))
    return engines
