"""Data sets choose the contract: an image folder (checked before any training), the torchvision sets (CIFAR-10 on
a tiny file in torchvision's format), conversion with --image-size / --channels."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from vaegan.train import data
from vaegan.train.errors import VaeganError

from ..conftest import RGB_CLASSES, write_image_folder


def test_folder_gives_its_contract_and_images(tmp_path):
    root = write_image_folder(tmp_path / "d", n_train=4, n_test=2)
    c = data.dataset_contract(str(root))
    assert c.shape == (3, 32, 32) and c.classes == RGB_CLASSES and len(c.mean) == 3
    x, y = data.load_split(True, dataset=str(root)).tensors
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert y[:3].tolist() != [0, 0, 0]  # one fixed shuffle: the first images mix the classes
    torch.testing.assert_close(torch.tensor(c.mean), x.mean(dim=(0, 2, 3)), atol=1e-4, rtol=0)
    g = data.dataset_contract(str(root), image_size=16, channels=1)
    xs = data.test_subset(5, dataset=str(root), image_size=16, channels=1)[0]
    assert g.shape == (1, 16, 16) and xs.shape == (5, 1, 16, 16)


@pytest.mark.parametrize("problem, match", [
    ("no-classes", r"train: no class folders"),
    ("single", r"train: a single class \(cat\)"),
    ("missing-test", r"test: class 'fish' of train/ is missing from test/"),
    ("corrupt", r"dog/001.png: unreadable or corrupt image"),
    ("not-image", r"notes.txt: not an image file"),
    ("size", r"30 x 30 is not one the VAE-GAN takes.*--image-size"),
    ("mixed", r"40 x 40 pixels, the first image is 32 x 32: pass --image-size"),
    ("no-test", r"test: missing"),
])
def test_bad_folder_is_one_clear_error_before_training(tmp_path, problem, match):
    import shutil

    from PIL import Image

    root = tmp_path / "d"
    if problem == "size":
        write_image_folder(root, n_train=2, n_test=1, size=(30, 30))
    else:
        write_image_folder(root, n_train=2, n_test=1)
    if problem == "no-classes":
        for p in (root / "train").iterdir():
            shutil.rmtree(p)
    elif problem == "single":
        for c in RGB_CLASSES[1:]:
            shutil.rmtree(root / "train" / c)
    elif problem == "missing-test":
        shutil.rmtree(root / "test" / "fish")
    elif problem == "corrupt":
        (root / "train" / "dog" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif problem == "not-image":
        (root / "train" / "cat" / "notes.txt").write_text("hi")
    elif problem == "mixed":
        Image.new("RGB", (40, 40)).save(root / "train" / "fish" / "big.png")
    elif problem == "no-test":
        shutil.rmtree(root / "test")
    with pytest.raises(VaeganError, match=match):
        data.dataset_contract(str(root))
    from click.testing import CliRunner

    from vaegan.train.cli import train_cli

    res = CliRunner().invoke(train_cli, ["classifier", "--dataset", str(root), "--epochs", "1",
                                         "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "Error:" in res.output and not (tmp_path / "o").exists()


def _tiny_cifar(root, n_train=6, n_test=4):
    """CIFAR-10's python batches (data_batch_1..5, test_batch, batches.meta) with a few random images each."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for f, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(d / f, "wb") as fh:
            pickle.dump(batch, fh)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh)
    return names


def test_cifar10_loader_on_a_tiny_file_in_torchvision_format(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    names = _tiny_cifar(tmp_path)
    # torchvision checks each file's md5 against the real CIFAR-10's and has no switch to skip it; the tiny files
    # here stand in for the real ones, so that check alone is replaced (the files are read as torchvision reads them)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    c = data.dataset_contract("cifar10", data_root=tmp_path)
    assert c.shape == (3, 32, 32) and c.classes == tuple(names) and c.mean == (0.4914, 0.4822, 0.4465)
    x, y, idx = data.test_subset(3, tmp_path, dataset="cifar10")
    assert x.shape == (3, 3, 32, 32) and idx.tolist() == [0, 1, 2]
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"))["data"][0]
    np.testing.assert_allclose(x[0].numpy(), raw.reshape(3, 32, 32) / 255.0, rtol=0, atol=1e-6)
    assert len(data.load_split(True, tmp_path, dataset="cifar10")) == 30
    g = data.test_subset(2, tmp_path, dataset="cifar10", channels=1, image_size=28)[0]
    assert g.shape == (2, 1, 28, 28)


def test_torchvision_set_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEGAN_DATA", raising=False)
    with pytest.raises(VaeganError, match=r"mnist not found: pass --data-root .* --download"):
        data.dataset_contract("mnist")
    with pytest.raises(VaeganError, match=r"cannot read cifar10 .*pass --download"):
        data.dataset_contract("cifar10", data_root=tmp_path)
    with pytest.raises(VaeganError, match=r"not one of fashion-mnist, mnist, cifar10, svhn and not a folder"):
        data.dataset_contract(str(tmp_path / "nowhere"))
