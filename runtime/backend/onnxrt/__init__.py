"""onnxruntime backend: ``SessionFromOnnx`` (lazy loader) and ``OnnxrtRunner``."""

from .loader import PROVIDERS, SessionFromOnnx, available_providers, resolve_providers
from .runner import OnnxrtRunner

__all__ = ["PROVIDERS", "SessionFromOnnx", "OnnxrtRunner", "available_providers", "resolve_providers"]
