"""OpenVINO backend (CPU): ``OpenvinoRunner`` over an ONNX model, compiled per input shape.

Needs the ``openvino`` package (``pip install 'vaegan[openvino]'``; ``make venv`` installs it). Importing this module
never fails; activating a runner without the package raises ``BackendUnavailableError`` with the install hint.
"""

from .runner import OpenvinoRunner, bf16_status, openvino_status, openvino_version

__all__ = ["OpenvinoRunner", "bf16_status", "openvino_status", "openvino_version"]
