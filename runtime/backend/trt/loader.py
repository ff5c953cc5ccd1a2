"""Lazy loaders for TensorRT engines (Polygraphy style): ``EngineFromPath(path)()`` -> ``trt.ICudaEngine``."""

from __future__ import annotations

from pathlib import Path

from ...errors import BackendUnavailableError
from ..base import import_optional
from .cuda import INSTALL_HINT, device_count


def import_tensorrt():
    return import_optional("tensorrt", "TensorRT", INSTALL_HINT)


def trt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT and cuda-python importable and at least one CUDA device visible."""
    try:
        trt = import_tensorrt()
        n = device_count()
    except BackendUnavailableError as e:
        return False, str(e)
    if n < 1:
        return False, "no CUDA device visible"
    return True, f"TensorRT {trt.__version__}, {n} CUDA device(s)"


_LOGGER = None


def _logger(trt):
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


class EngineFromBytes:
    """Deserializes a serialized engine (bytes, or a loader returning bytes)."""

    def __init__(self, serialized):
        self.serialized = serialized

    def __call__(self):
        trt = import_tensorrt()
        data = self.serialized() if callable(self.serialized) else self.serialized
        runtime = trt.Runtime(_logger(trt))
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendUnavailableError(
                "TensorRT could not deserialize the engine (built by another TensorRT version or for another GPU?); "
                "rebuild it with `vaegan-export --trt --out DIR` on this machine")
        self._runtime = runtime  # keep the runtime alive as long as the loader (and its engine) lives
        return engine


class BytesFromPath:
    def __init__(self, path):
        self.path = Path(path)

    def __call__(self) -> bytes:
        return self.path.read_bytes()


class EngineFromPath(EngineFromBytes):
    """``EngineFromPath("artifacts/purify.fp32.engine")()`` -> deserialized engine."""

    def __init__(self, path):
        self.path = Path(path)
        super().__init__(BytesFromPath(self.path))
