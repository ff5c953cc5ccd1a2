"""Data sets and the image contract they choose: Fashion-MNIST (the default), MNIST, CIFAR-10 and SVHN through
torchvision, or a folder of the user's own images; the project's data-root resolution and fixed evaluation subsets.

``dataset`` (``--dataset``): one of ``DATASETS`` or a folder PATH holding ``train/<class>/*`` and
``test/<class>/*`` (any image format Pillow reads; class names are the folder names, sorted). ``image_size`` /
``channels`` (``--image-size S``, ``--channels 1|3``) convert every image through the runtime's one preprocessing
function (``vaegan.runtime.io.to_model_input``), so training sees what deployment sees; by default a set keeps its
own size and channels. The image contract (``vaegan.runtime.contract.ImageContract``) of a set comes from
``dataset_contract``: a torchvision set's classes and the usual mean / std, a folder's sorted folder names and its
training images' per-channel mean / std.

Data root resolution for Fashion-MNIST, in order (the other torchvision sets: the first two, then the cache folder
with ``--download``):
1. the ``--data-root`` option (``data_root`` argument),
2. the ``$VAEGAN_DATA`` environment variable,
3. Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, flat ``.gz`` files; they are
   decompressed once into ``$XDG_CACHE_HOME/vaegan`` in torchvision's layout),
4. torchvision's download, only when ``download=True`` (``--download``).

A root is accepted in torchvision's layout (``ROOT/FashionMNIST/raw/*-ubyte``) or as a flat folder of the four
``*-ubyte.gz`` files.

Fixed subsets (the paper's sizes; Table 1 in docs/results.md uses them):
- ``TRAIN_SUBSET``: the first 10,000 training images (adversarial training set),
- ``TEST_SUBSET``: the first 2,000 test images (adversarial test set, Table 1).
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .errors import VaeganError

from vaegan.runtime.contract import FASHION_MNIST, ContractError, ImageContract

CLASSES = FASHION_MNIST.classes
DATASETS = ("fashion-mnist", "mnist", "cifar10", "svhn")
# torchvision class, its folder under the root, and the per-channel mean / std the classifier normalises with
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST", (0.1307,), (0.3081,)),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ("SVHN", "SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
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


def _root_for(name: str, data_root, download: bool) -> Path:
    """MNIST / CIFAR-10 / SVHN: --data-root, else $VAEGAN_DATA, else (with --download) the cache folder."""
    for cand in (data_root, os.environ.get("VAEGAN_DATA")):
        if cand:
            return Path(cand).expanduser()
    if download:
        root = _cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        return root
    raise VaeganError(f"{name} not found: pass --data-root DIR (torchvision's layout), set $VAEGAN_DATA, or pass "
                      f"--download to fetch it with torchvision")


def _torchvision_split(name: str, train: bool, data_root, download: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   ImageContract]:
    import torchvision.datasets as tvd

    if name == "fashion-mnist":
        root = resolve_data_root(data_root, download)
        try:
            ds = tvd.FashionMNIST(root=str(root), train=train, download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found..."
            raise VaeganError(f"{root}: cannot read Fashion-MNIST ({e})") from None
        return ds.data.unsqueeze(1).float().div_(255.0), ds.targets.clone(), FASHION_MNIST
    cls_name, _folder, mean, std = _TORCHVISION[name]
    root = _root_for(name, data_root, download)
    try:
        if name == "svhn":
            ds = tvd.SVHN(root=str(root / "SVHN"), split="train" if train else "test", download=download)
            x, y, classes = torch.from_numpy(ds.data), torch.as_tensor(ds.labels, dtype=torch.int64), \
                [str(i) for i in range(10)]
        else:
            ds = getattr(tvd, cls_name)(root=str(root), train=train, download=download)
            data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(ds.data)
            x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # CIFAR: N x H x W x C
            y, classes = torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)
    except RuntimeError as e:
        raise VaeganError(f"{root}: cannot read {name} ({str(e).splitlines()[0]}; pass --download to fetch it)") \
            from None
    c = ImageContract(x.shape[1], x.shape[2], x.shape[3], tuple(classes), mean, std)
    return x.float().div_(255.0), y, c


def _convert(x: torch.Tensor, contract: ImageContract) -> torch.Tensor:
    """Images (N x C x H x W in [0, 1]) -> the contract's channels and size, through the runtime's preprocessing."""
    if tuple(x.shape[1:]) == contract.shape:
        return x
    import numpy as np
    from PIL import Image

    from vaegan.runtime.io import to_model_input

    pre = contract.preprocess()
    out = np.empty((len(x), *contract.shape), np.float32)
    for i, img in enumerate(x.mul(255).round_().to(torch.uint8).numpy()):
        im = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        out[i] = to_model_input(im, pre)
    return torch.from_numpy(out)


def _is_folder(dataset: str) -> bool:
    return dataset not in DATASETS


def _channels_of(im) -> int:
    """A folder's own channel count, from its first image: grayscale modes 1, anything else (RGB, palette...) 3."""
    return 1 if im.mode in ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N") else 3


def _scan_folder(root: Path) -> dict[str, dict[str, list[Path]]]:
    """{split: {class: sorted image files}}, checked: both splits, at least two classes, the same classes in both,
    no empty class, no file that is not an image. One VaeganError naming the path and the problem otherwise."""
    from vaegan.runtime.io import IMAGE_EXTS

    if not root.is_dir():
        raise VaeganError(f"--dataset {root}: not one of {', '.join(DATASETS)} and not a folder")
    splits = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise VaeganError(f"{d}: missing (a dataset folder holds train/<class>/* and test/<class>/*)")
        classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise VaeganError(f"{d}: no class folders (expected {d}/<class>/<image>)")
        files = {}
        for c in classes:
            entries = sorted(p for p in (d / c).rglob("*") if p.is_file() and
                             not any(part.startswith(".") for part in p.relative_to(d / c).parts))
            bad = [p for p in entries if p.suffix.lower() not in IMAGE_EXTS]
            if bad:
                raise VaeganError(f"{bad[0]}: not an image file (supported: {' '.join(IMAGE_EXTS)})")
            if not entries:
                raise VaeganError(f"{d / c}: class folder holds no images")
            files[c] = entries
        splits[split] = files
    train_c, test_c = list(splits["train"]), list(splits["test"])
    if len(train_c) < 2:
        raise VaeganError(f"{root / 'train'}: a single class ({train_c[0]}); a classifier needs at least two")
    missing = [c for c in train_c if c not in splits["test"]]
    if missing:
        raise VaeganError(f"{root / 'test'}: class {missing[0]!r} of train/ is missing from test/")
    extra = [c for c in test_c if c not in splits["train"]]
    if extra:
        raise VaeganError(f"{root / 'test'}: class {extra[0]!r} is not among train/'s classes")
    return splits


def _open(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise VaeganError(f"{path}: unreadable or corrupt image ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None


@functools.lru_cache(maxsize=4)
def _folder(root: str, image_size: int | None, channels: int | None):
    """Both splits of a folder data set, converted, and its contract: ({split: (x, y)}, contract)."""
    import numpy as np

    from vaegan.runtime.io import to_model_input

    path = Path(root).expanduser()
    splits = _scan_folder(path)
    classes = tuple(splits["train"])
    first = _open(splits["train"][classes[0]][0])
    c = channels or _channels_of(first)
    if c not in (1, 3):
        raise VaeganError(f"--channels {c}: expected 1 or 3")
    h, w = (image_size, image_size) if image_size else (first.size[1], first.size[0])
    probe = ImageContract(c, h, w, classes, (0.5,) * c, (0.5,) * c)
    try:
        probe.check_vaegan_size(str(path))
    except ContractError as e:
        raise VaeganError(str(e)) from None
    pre = probe.preprocess()
    out = {}
    for split, files in splits.items():
        xs, ys = [], []
        for k, cname in enumerate(classes):
            for p in files[cname]:
                im = _open(p)
                if not image_size and im.size != (w, h):
                    raise VaeganError(f"{p}: {im.size[0]} x {im.size[1]} pixels, the first image is {w} x {h}: "
                                      f"pass --image-size S to resize every image to S x S")
                xs.append(to_model_input(im, pre))
                ys.append(k)
        # one fixed shuffle (seed 0): the "first n images" of a split (evaluation subsets) mix every class
        order = torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))
        out[split] = (torch.from_numpy(np.stack(xs))[order], torch.tensor(ys, dtype=torch.int64)[order])
    xt = out["train"][0]
    mean = xt.mean(dim=(0, 2, 3)).tolist()
    std = xt.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    contract = ImageContract(c, h, w, classes, tuple(round(m, 4) for m in mean), tuple(round(s, 4) for s in std))
    return out, contract


def _split(dataset: str, train: bool, data_root, download: bool, image_size, channels):
    if _is_folder(dataset):
        splits, contract = _folder(dataset, image_size, channels)
        x, y = splits["train" if train else "test"]
        return x, y, contract
    x, y, native = _torchvision_split(dataset, train, data_root, download)
    if channels and channels not in (1, 3):
        raise VaeganError(f"--channels {channels}: expected 1 or 3")
    c = channels or native.channels
    h = w = image_size or None
    contract = ImageContract(c, h or native.height, w or native.width, native.classes,
                             native.mean if c == native.channels else (sum(native.mean) / len(native.mean),) * c,
                             native.std if c == native.channels else (sum(native.std) / len(native.std),) * c)
    return _convert(x, contract), y, contract


def load_split(train: bool, data_root=None, download: bool = False, dataset: str = "fashion-mnist",
               image_size: int | None = None, channels: int | None = None) -> TensorDataset:
    """The whole split as a TensorDataset of (float images in [0,1], shape N x C x H x W; int64 labels)."""
    x, y, _ = _split(str(dataset), train, None if data_root is None else str(data_root), download, image_size,
                     channels)
    return TensorDataset(x, y)


def dataset_contract(dataset: str = "fashion-mnist", data_root=None, download: bool = False,
                     image_size: int | None = None, channels: int | None = None) -> ImageContract:
    """The image contract of a data set (reads it: a folder is checked and loaded once per process)."""
    if str(dataset) == "fashion-mnist" and not image_size and not channels:
        return FASHION_MNIST
    return _split(str(dataset), True, None if data_root is None else str(data_root), download, image_size,
                  channels)[2]


def data_kwargs(cfg) -> dict:
    """The data options of a config dataclass (``dataset``, ``data_root``, ``image_size``, ``channels``,
    ``download``) as keyword arguments of ``load_split`` / ``dataset_contract`` / the subsets."""
    return {"data_root": getattr(cfg, "data_root", None), "download": getattr(cfg, "download", False),
            "dataset": getattr(cfg, "dataset", "fashion-mnist"), "image_size": getattr(cfg, "image_size", None),
            "channels": getattr(cfg, "channels", None)}


def test_subset(n: int = TEST_SUBSET, data_root=None, **data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` test images: (x, y, source indices). ``data``: ``dataset``, ``image_size``, ``channels``,
    ``download`` as ``load_split``."""
    ds = load_split(False, data_root, **data)
    idx = torch.arange(min(n, len(ds)))
    x, y = ds.tensors
    return x[idx], y[idx], idx


def train_subset(n: int = TRAIN_SUBSET, data_root=None, **data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` training images: (x, y, source indices)."""
    ds = load_split(True, data_root, **data)
    idx = torch.arange(min(n, len(ds)))
    x, y = ds.tensors
    return x[idx], y[idx], idx


__all__ = [
    "CLASSES", "DATASETS", "TRAIN_SUBSET", "TEST_SUBSET", "resolve_data_root", "load_split", "dataset_contract",
    "data_kwargs", "test_subset", "train_subset",
]
