"""Runners: one interface (``activate / infer / deactivate``) over onnxruntime and TensorRT."""

from .base import BaseRunner, TensorMeta

__all__ = ["BaseRunner", "TensorMeta"]
