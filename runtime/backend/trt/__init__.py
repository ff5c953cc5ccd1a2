"""TensorRT backend: ``EngineFromPath`` / ``EngineFromBytes`` (lazy loaders) and ``TrtRunner``.

Needs an NVIDIA GPU, the ``tensorrt`` package (10.x) and ``cuda-python`` (``pip install 'vaegan[gpu]'``). Importing
this module never fails; the loaders raise ``BackendUnavailableError`` with the install hint when they cannot run.
"""

from .loader import EngineFromBytes, EngineFromPath, trt_status
from .runner import TrtRunner

__all__ = ["EngineFromBytes", "EngineFromPath", "TrtRunner", "trt_status"]
