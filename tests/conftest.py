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


# ---------------------------------------------------------------------------------------------- any image contract

RGB_CLASSES = ("cat", "dog", "fish")  # sorted: the folder loader's class order


def write_image_folder(root: Path, classes=RGB_CLASSES, n_train: int = 8, n_test: int = 3, size=(32, 32),
                       mode: str = "RGB", seed: int = 0) -> Path:
    """A tiny image-folder data set (train/<class>/*.png, test/<class>/*.png): per class a coloured square of its
    own colour and position on a noisy background, so a network can tell the classes apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(classes):
            d = Path(root) / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.uniform(0, 0.3, (h, w, 3))
                col = np.eye(3)[k % 3] * 0.9 + 0.1
                y0, x0 = (k * h // (len(classes) + 1)), rng.integers(0, w // 2)
                img[y0:y0 + h // 3, x0:x0 + w // 3] = col
                a = (img * 255).astype(np.uint8)
                im = Image.fromarray(a, mode="RGB")
                (im if mode == "RGB" else im.convert(mode)).save(d / f"{i:03d}.png")
    return Path(root)


@pytest.fixture(scope="session")
def rgb_chain(tmp_path_factory):
    """The whole chain through the CLIs on a tiny 3 x 32 x 32, 3-class image folder: vaegan-train classifier,
    vaegan, purifier (1 epoch each, tiny nets), the classifier saved as a torch.export program (.pt2), vaegan-export
    with that program, vaegan-run on RGB (and grayscale) frames of other sizes. Each step's result is kept; a step
    runs only when the one before it succeeded."""
    import torch
    from click.testing import CliRunner

    from vaegan.export.cli import main as export_main
    from vaegan.runtime.cli import main as run_main
    from vaegan.train import checkpoint
    from vaegan.train.cli import train_cli

    base = tmp_path_factory.mktemp("rgb_chain")
    data = write_image_folder(base / "data")
    r = CliRunner()
    out = {"data": data, "base": base, "results": {}}
    common = ["--dataset", str(data), "--epochs", "1", "--batch-size", "8", "--eval-limit", "9", "--threads", "1"]
    steps = [
        ("classifier", train_cli, ["classifier", *common, "--width-div", "16", "--fc-width", "32",
                                   "--out", str(base / "clf")]),
        ("vaegan", train_cli, ["vaegan", *common, "--width", "8", "--latent-dim", "8", "--out", str(base / "vg")]),
        ("purifier", train_cli, ["purifier", *common, "--init", str(base / "vg" / "model.pt"),
                                 "--classifier", str(base / "clf" / "model.pt"), "--purify-lam", "5",
                                 "--adaptive-steps", "1", "--out", str(base / "pur")]),
    ]
    for name, cmd, args in steps:
        res = r.invoke(cmd, args)
        out["results"][name] = res
        if res.exit_code != 0:
            return out
    clf, _ = checkpoint.load_model(base / "clf" / "model.pt", "classifier")
    ep = torch.export.export(clf.eval(), (torch.rand(2, 3, 32, 32),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(base / "classifier.pt2"))
    res = r.invoke(export_main, ["--checkpoint", str(base / "pur" / "model.pt"), "--classifier",
                                 str(base / "classifier.pt2"), "--out", str(base / "art"), "--max-batch", "4",
                                 "--dataset", str(data), "--threads", "1"])
    out["results"]["export"] = res
    if res.exit_code != 0:
        return out
    from PIL import Image

    frames = base / "frames"
    frames.mkdir()
    for split_dir in sorted((data / "test").iterdir())[:2]:
        src = sorted(split_dir.iterdir())[0]
        Image.open(src).resize((48, 40)).save(frames / f"{split_dir.name}_big.png")
        Image.open(src).convert("L").save(frames / f"{split_dir.name}_gray.png")
    out["frames"] = frames
    out["results"]["run"] = r.invoke(run_main, ["--input", str(frames), "--artifacts", str(base / "art"),
                                                "--out", str(base / "run"), "--threads", "1"])
    return out
