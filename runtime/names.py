"""The names the runtime's choices go by, in a module that imports nothing: the CLIs (``vaegan-run``,
``bench/latency.py``) list them at ``--help`` without importing onnxruntime, and ``runtime.purify`` checks against
the same tuples."""

BACKENDS = ("auto", "fused", "modular", "trt")
FAST_PATH_ENGINES = ("auto", "onnxruntime", "openvino")  # auto: openvino when installed, else onnxruntime
# how runner names, descriptions and the export's validation report name each engine of the CPU fast path
FAST_PATH_ENGINE_LABELS = {"onnxruntime": "onnxruntime opt all", "openvino": "OpenVINO CPU"}
# arithmetic of the CPU fast path: bf16 runs on OpenVINO only, on CPUs with AVX512-BF16 / AMX (opt-in: it does
# not meet the export's fp32 tolerances; its accuracy is measured by bench/precision.py)
PRECISIONS = ("fp32", "bf16")


def unsupported_purifier(mode: str, init: str) -> str | None:
    """Why purification ``mode`` / ``init`` cannot run on the runtime, nor be exported as purify.onnx (None: it can).
    Both implement the default mode only: latent descent seeded by the encoder (``vaegan.train.purifier.purify``)."""
    if (mode, init) == ("latent", "encoder"):
        return None
    return f"purify.onnx and the runtime implement mode=latent, init=encoder only (got mode={mode}, init={init})"
