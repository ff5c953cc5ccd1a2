"""Fixtures for the runtime tests: artifacts exported once per session with ``vaegan.export.export_all`` from the
tiny random-init checkpoints (and the shipped weights, skipped until they exist), real test images, and a small
folder of frames."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "frames"


@pytest.fixture(scope="session")
def artifacts_dir(tiny_artifacts) -> Path:
    """The session's one export of the tiny checkpoints (tests/conftest.py)."""
    return tiny_artifacts


@pytest.fixture(scope="session")
def shipped_artifacts_dir(shipped_export) -> Path:
    return shipped_export[0]


@pytest.fixture
def artifacts_copy(artifacts_dir, tmp_path) -> Path:
    """A private copy of the tiny artifacts, for tests that damage it."""
    dst = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, dst)
    return dst


@pytest.fixture(scope="session")
def fmnist64():
    """The first 64 Fashion-MNIST test images (float32 Nx1x28x28 in [0, 1]) and labels, as numpy arrays."""
    from vaegan.train.data import test_subset

    x, y, _ = test_subset(64)
    return x.numpy().astype(np.float32), y.numpy()


@pytest.fixture(scope="session")
def frames_dir(tmp_path_factory, fmnist64) -> Path:
    """12 clean 28x28 PNG frames, one 200x160 RGB PNG and one RGB JPEG (the resize path)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("frames")
    x, y = fmnist64
    for i in range(12):
        Image.fromarray((x[i, 0] * 255).round().astype(np.uint8), mode="L").save(d / f"clean_{i:04d}_{y[i]}.png")
    big = Image.fromarray((x[12, 0] * 255).round().astype(np.uint8), mode="L").resize((200, 160), Image.BILINEAR)
    rgb = Image.merge("RGB", [big, big.point(lambda v: v * 0.8), big.point(lambda v: v * 0.5)])
    rgb.save(d / "rgb_200x160.png")
    rgb.save(d / "rgb_200x160.jpg", quality=90)
    return d
