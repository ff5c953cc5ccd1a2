"""Shared fixtures: tiny random-init checkpoints (fast), the shipped weights, and the data root.

The data root: ``$VAEGAN_DATA`` if set, else ``../shared/data`` beside the checkout (as on CI). Nothing downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

if "VAEGAN_DATA" not in os.environ and SHARED_DATA.exists():
    os.environ["VAEGAN_DATA"] = str(SHARED_DATA)


def _has_data() -> bool:
    """Whatever the product itself resolves (torchvision layout, or a flat folder of .gz files as Debian ships it)."""
    from vaegan.train.data import resolve_data_root
    from vaegan.train.errors import VaeganError

    try:
        resolve_data_root(None)
    except VaeganError:
        return False
    return True


requires_data = pytest.mark.skipif(not _has_data(), reason="Fashion-MNIST not available (set $VAEGAN_DATA)")


@pytest.fixture(scope="session")
def tiny_vaegan_ckpt(tmp_path_factory) -> Path:
    """A random-init VAE-GAN checkpoint with small widths (latent 8, width 8), BatchNorm stats randomised so that
    eval-mode BN is not the identity."""
    import torch

    from vaegan.train import checkpoint
    from vaegan.train.config import VAEGANArgs
    from vaegan.train.models import VAEGAN

    torch.manual_seed(0)
    args = VAEGANArgs(latent_dim=8, width=8)
    vg = VAEGAN(args)
    for m in vg.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_vaegan.pt"
    from dataclasses import asdict

    checkpoint.save(path, {"kind": "vaegan", "model": vg.state_dict(), "model_args": asdict(args), "config": {},
                           "epoch": 0, "step": 0, "metrics": {}, "best_metric": None})
    return path


@pytest.fixture(scope="session")
def tiny_classifier_ckpt(tmp_path_factory) -> Path:
    import torch

    from vaegan.train import checkpoint
    from vaegan.train.config import ClassifierArgs
    from vaegan.train.models import VGG16

    torch.manual_seed(0)
    args = ClassifierArgs(width_div=16, fc_width=32)
    m = VGG16(args)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_classifier.pt"
    from dataclasses import asdict

    checkpoint.save(path, {"kind": "classifier", "model": m.state_dict(), "model_args": asdict(args), "config": {},
                           "epoch": 0, "step": 0, "metrics": {}, "best_metric": None})
    return path


@pytest.fixture(scope="session")
def shipped_vaegan() -> Path:
    p = ROOT / "models" / "vaegan.pt"
    if not p.exists():
        pytest.skip("shipped weights models/vaegan.pt not present yet")
    return p


@pytest.fixture(scope="session")
def shipped_classifier() -> Path:
    p = ROOT / "models" / "classifier.pt"
    if not p.exists():
        pytest.skip("shipped weights models/classifier.pt not present yet")
    return p


@pytest.fixture(scope="session")
def tiny_export(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path_factory):
    """ONE export of the tiny nets per session, through the CLI with --trt, shared by the export, runtime and bench
    tests. Without TensorRT / an NVIDIA GPU the command must still write and validate every ONNX file, then exit 2
    with the install hint; with them it exits 0 and also writes engines."""
    import json

    from click.testing import CliRunner

    from vaegan.export.cli import main

    out = tmp_path_factory.mktemp("artifacts")
    res = CliRunner().invoke(main, ["--checkpoint", str(tiny_vaegan_ckpt), "--classifier", str(tiny_classifier_ckpt),
                                    "--out", str(out), "--trt", "--threads", "1"])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None
    return {"out": Path(out), "result": res, "manifest": manifest, "vaegan": tiny_vaegan_ckpt,
            "classifier": tiny_classifier_ckpt}


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_export) -> Path:
    """The tiny export's folder (do not modify it: copy it first)."""
    assert tiny_export["manifest"] is not None, tiny_export["result"].output
    return tiny_export["out"]


@pytest.fixture(scope="session")
def shipped_export(tmp_path_factory, shipped_vaegan, shipped_classifier) -> tuple[Path, dict]:
    """ONE export of the shipped weights per session: (folder, manifest)."""
    import torch

    from vaegan.export import export_all

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("shipped_artifacts")
    m = export_all(shipped_vaegan, shipped_classifier, out, opset=18, max_batch=64, echo=lambda *_: None)
    return Path(out), m
