"""``manifest.json``, exactly per docs/ARTIFACTS.md (format_version 1)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("format_version", "vaegan_version", "torch_version", "onnx_version", "opset", "checkpoint",
                 "classifier_checkpoint", "latent_dim", "preprocess", "classes", "purify_defaults", "max_batch",
                 "graphs", "engines")


def build(*, opset: int, latent_dim: int, max_batch: int, checkpoint: tuple[str, str],
          classifier_checkpoint: tuple[str, str], graphs: dict, engines: dict, purify_cfg, contract) -> dict:
    """The manifest. ``checkpoint`` / ``classifier_checkpoint``: (file name, sha256), no folder: the same weights
    give the same manifest on every machine. ``contract``: the purifier's image contract (``ImageContract``):
    ``preprocess`` and ``classes``."""
    import onnx
    import torch

    from vaegan import __version__

    return {
        "format_version": FORMAT_VERSION,
        "vaegan_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "opset": opset,
        "checkpoint": {"file": checkpoint[0], "sha256": checkpoint[1]},
        "classifier_checkpoint": {"file": classifier_checkpoint[0], "sha256": classifier_checkpoint[1]},
        "latent_dim": latent_dim,
        "preprocess": contract.preprocess(),
        "classes": list(contract.classes),
        "purify_defaults": asdict(purify_cfg),
        "max_batch": max_batch,
        "graphs": graphs,
        "engines": engines,
    }


def write(out_dir: Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path
