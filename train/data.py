"""Fashion-MNIST through torchvision, with the project's data-root resolution and fixed evaluation subsets.

Data root resolution, in order:
1. the ``--data-root`` option (``data_root`` argument),
2. the ``$VAEGAN_DATA`` environment variable,
3. Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, flat ``.gz`` files; they are
   decompressed once into ``$XDG_CACHE_HOME/vaegan`` in torchvision's layout),
4. torchvision's download, only when ``download=True`` (``--download``).

A root is accepted in torchvision's layout (``ROOT/FashionMNIST/raw/*-ubyte``) or as a flat folder of the four
``*-ubyte.gz`` files.

Fixed subsets (the paper's sizes; every number in the README uses them):
- ``TRAIN_SUBSET``: the first 10,000 training images (adversarial training set),
- ``TEST_SUBSET``: the first 2,000 test images (adversarial test set, Table 1).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .errors import VaeganError

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
TRAIN_SUBSET = 10_000
from .config import TEST_SUBSET


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vaegan" / "data"


def _has_torchvision_layout(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    return all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in RAW_FILES)


def _has_flat_gz(root: Path) -> bool:
    return all((root / f"{f}.gz").exists() for f in RAW_FILES)


def _from_flat_gz(flat: Path) -> Path:
    """Decompress a flat folder of ``*.gz`` files into the cache, in torchvision's layout; return the new root."""
    root = _cache_dir()
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        dst = raw / name
        if not dst.exists():
            # a temporary name of its own: processes started together (torchrun, parallel runs) each write a whole
            # copy and the atomic rename lets the last one win, instead of renaming each other's half-written file
            with gzip.open(flat / f"{name}.gz", "rb") as src, \
                    tempfile.NamedTemporaryFile(dir=raw, prefix=f"{name}.", suffix=".tmp", delete=False) as out:
                try:
                    shutil.copyfileobj(src, out)
                except BaseException as e:  # a corrupt .gz or an interrupt leaves no temporary behind
                    Path(out.name).unlink()
                    if isinstance(e, (OSError, EOFError)):
                        raise VaeganError(f"{flat / f'{name}.gz'}: cannot decompress it ({e})") from None
                    raise
            Path(out.name).replace(dst)
    return root


def _usable(root: Path) -> Path | None:
    if _has_torchvision_layout(root):
        return root
    if _has_flat_gz(root):
        return _from_flat_gz(root)
    return None


def resolve_data_root(data_root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """Return a root that ``torchvision.datasets.FashionMNIST(root, download=False)`` can read."""
    tried = []
    for origin, cand in (("--data-root", data_root), ("$VAEGAN_DATA", os.environ.get("VAEGAN_DATA"))):
        if cand:
            path = Path(cand).expanduser()
            found = _usable(path)
            if found is None:
                raise VaeganError(
                    f"{origin}={path}: no Fashion-MNIST there (expected FashionMNIST/raw/*-ubyte[.gz] "
                    f"or the four *-ubyte.gz files)"
                )
            return found
        tried.append(origin)
    found = _usable(DEBIAN_DIR) if DEBIAN_DIR.exists() else None
    if found is not None:
        return found
    if download:
        root = _cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        return root
    raise VaeganError(
        "Fashion-MNIST not found: pass --data-root DIR, set $VAEGAN_DATA, install Debian's package "
        "dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), or pass --download to fetch it with torchvision"
    )


def load_split(train: bool, data_root=None, download: bool = False) -> TensorDataset:
    """The whole split as a TensorDataset of (float images in [0,1], shape Nx1x28x28; int64 labels)."""
    from torchvision.datasets import FashionMNIST

    root = resolve_data_root(data_root, download)
    try:
        ds = FashionMNIST(root=str(root), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found..."
        raise VaeganError(f"{root}: cannot read Fashion-MNIST ({e})") from None
    x = ds.data.unsqueeze(1).float().div_(255.0)
    return TensorDataset(x, ds.targets.clone())


def test_subset(n: int = TEST_SUBSET, data_root=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` test images: (x, y, source indices)."""
    ds = load_split(False, data_root)
    idx = torch.arange(min(n, len(ds)))
    x, y = ds.tensors
    return x[idx], y[idx], idx


def train_subset(n: int = TRAIN_SUBSET, data_root=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` training images: (x, y, source indices)."""
    ds = load_split(True, data_root)
    idx = torch.arange(min(n, len(ds)))
    x, y = ds.tensors
    return x[idx], y[idx], idx


__all__ = [
    "CLASSES", "TRAIN_SUBSET", "TEST_SUBSET", "resolve_data_root", "load_split", "test_subset", "train_subset",
]
