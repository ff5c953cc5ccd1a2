"""Torch-free runtime: read the exported artifacts (docs/ARTIFACTS.md), purify and classify frames.

Depends on numpy, Pillow, onnxruntime and onnx (the fused backend's CPU fast path unrolls ``purify.onnx``'s Loop in
memory) only (TensorRT + cuda-python when present, OpenCV for video/camera input). Nothing here imports torch;
``tests/runtime/test_runtime_cli.py`` checks that with torch blocked.

Layout (Polygraphy style):

- ``backend/base.py``          -- ``BaseRunner``: ``activate() / infer(feed) / deactivate()``, feed checks, timing
- ``backend/onnxrt/``          -- ``SessionFromOnnx`` (lazy loader) and ``OnnxrtRunner``
- ``backend/trt/``             -- ``EngineFromPath`` (lazy loader) and ``TrtRunner`` (device buffers, CUDA graphs)
- ``defense.py``               -- ``Defense``: load once, call on frames (the library API; ``vaegan-run`` uses it)
- ``policy.py``                -- ``BackendOptions`` (the backend knobs) and ``resolve_plan`` (every auto choice)
- ``artifacts.py``             -- manifest loading, format version and sha256 checks
- ``purify.py``                -- purifier backends ``fused`` / ``modular`` / ``trt`` and the classifier
- ``names.py``                 -- the backend and fast-path engine names (imports nothing; the CLIs' choices)
- ``io.py``                    -- frame sources, the prefetch queue and THE preprocessing function
- ``cli.py``                   -- ``vaegan-run``
"""

from .errors import (ArtifactError, BackendUnavailableError, FeedError, InputError, OutputError,
                     RuntimeUsageError, VaeganRuntimeError)

# the API, imported on first use: ``import vaegan.runtime.errors`` (the CLIs' error types) stays free of numpy
_LAZY = {"Defense": "defense", "DefenseResult": "defense", "PurifyResult": "defense", "BackendOptions": "policy"}

__all__ = ["ArtifactError", "BackendOptions", "BackendUnavailableError", "Defense", "DefenseResult", "FeedError",
           "InputError", "OutputError", "PurifyResult", "RuntimeUsageError", "VaeganRuntimeError"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
