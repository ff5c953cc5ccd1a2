"""ONNX / TensorRT export of E, G, D, the classifier, their input-gradient graphs and the fused purifier.

``export_all(vaegan_ckpt, classifier_ckpt, out_dir, ...)`` is the library entry point (``vaegan.export.core``);
``vaegan-export`` (``vaegan.export.cli:main``) is the command. Importing this package imports no torch.
"""

from __future__ import annotations


def export_all(*args, **kwargs) -> dict:
    """See ``vaegan.export.core.export_all``."""
    from .core import export_all as _export_all

    return _export_all(*args, **kwargs)


__all__ = ["export_all"]
