"""OpenVINO backend (CPU): ``OpenvinoRunner`` over an ONNX model, compiled per input shape.

Needs the ``openvino`` package (``pip install 'vaegan[openvino]'``; ``make venv`` installs it). Importing this module
never fails; activating a runner without the package raises ``BackendUnavailableError`` with the install hint.
"""

from .runner import OpenvinoRunner, openvino_status

__all__ = ["OpenvinoRunner", "openvino_status"]
