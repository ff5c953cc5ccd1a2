"""The image contract: what every stage agrees an image is (defined once; no torch, no numpy).

An ``ImageContract`` is ``channels`` (1 or 3) x ``height`` x ``width`` float32 pixels in [0, 1], NCHW, one label
out of ``classes`` (names, in class-index order), and the per-channel ``mean`` / ``std`` the classifier normalises
its input with (inside the classifier: attacks and the purifier always see [0, 1] pixels).

The dataset chooses it (``vaegan.train.data``); every checkpoint stores it (key ``contract``); ``vaegan-export``
writes it into the manifest's ``preprocess`` and ``classes``; the runtime, export validation, eval, attacks and bench
read it from there. A checkpoint without the key predates the contract and is Fashion-MNIST's (``FASHION_MNIST``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import VaeganRuntimeError


class ContractError(VaeganRuntimeError, ValueError):
    """Two stages disagree on the image contract, or a contract is malformed (one line, naming both sides)."""


# The VAE-GAN's encoder and discriminator halve the image twice with 4x4 stride-2 convolutions and G doubles its
# H/4 x W/4 grid twice: height and width must be multiples of 4 (and at least 8).
SIZE_MULTIPLE = 4
MIN_SIZE = 8


@dataclass(frozen=True)
class ImageContract:
    channels: int
    height: int
    width: int
    classes: tuple
    mean: tuple
    std: tuple

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3):
            raise ContractError(f"image contract: channels {self.channels} (expected 1 or 3)")
        if len(self.classes) < 2:
            raise ContractError(f"image contract: {len(self.classes)} class(es) (a classifier needs at least 2)")
        if len(set(self.classes)) != len(self.classes):
            raise ContractError(f"image contract: duplicate class names in {list(self.classes)}")
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise ContractError(f"image contract: mean {list(self.mean)} / std {list(self.std)} must give one value "
                                f"per channel ({self.channels}), std > 0")
        if int(self.height) < 1 or int(self.width) < 1:
            raise ContractError(f"image contract: size {self.height} x {self.width}")

    # -- derived -------------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple:
        """(C, H, W) of one image."""
        return (self.channels, self.height, self.width)

    @property
    def mode(self) -> str:
        """The Pillow mode images are converted to: "L" for 1 channel, "RGB" for 3."""
        return "L" if self.channels == 1 else "RGB"

    def describe(self) -> str:
        return f"{self.channels} x {self.height} x {self.width}, {self.num_classes} classes"

    def check_vaegan_size(self, where: str = "image contract") -> None:
        """Sizes the VAE-GAN takes (see SIZE_MULTIPLE): a one-line ContractError otherwise."""
        bad = [d for d in (self.height, self.width) if d % SIZE_MULTIPLE or d < MIN_SIZE]
        if bad:
            raise ContractError(f"{where}: image size {self.height} x {self.width} is not one the VAE-GAN takes "
                                f"(height and width must be multiples of {SIZE_MULTIPLE}, at least {MIN_SIZE}); "
                                f"resize with --image-size")

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"channels": self.channels, "height": self.height, "width": self.width, "classes": list(self.classes),
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "image contract") -> "ImageContract":
        try:
            return cls(int(d["channels"]), int(d["height"]), int(d["width"]), tuple(d["classes"]),
                       tuple(d["mean"]), tuple(d["std"]))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ContractError):
                raise ContractError(f"{where}: {e}") from None
            raise ContractError(f"{where}: not an image contract ({type(e).__name__}: {e})") from None

    def preprocess(self) -> dict:
        """The manifest's ``preprocess`` section: what a frame becomes before the graphs see it. ``normalize`` is
        applied inside the classifier graph (informational for a caller feeding the classifier directly)."""
        return {"channels": self.channels, "height": self.height, "width": self.width, "mode": self.mode,
                "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0],
                "normalize": {"mean": list(self.mean), "std": list(self.std)}}

    @classmethod
    def from_manifest(cls, manifest: dict, where: str = "manifest") -> "ImageContract":
        pre = manifest.get("preprocess") or {}
        norm = pre.get("normalize") or {}
        c = int(pre.get("channels", 1))
        fallback = FASHION_MNIST if c == 1 else None
        return cls.from_dict({"channels": c, "height": pre.get("height"), "width": pre.get("width"),
                              "classes": manifest.get("classes"),
                              "mean": norm.get("mean", fallback.mean if fallback else None),
                              "std": norm.get("std", fallback.std if fallback else None)}, where)

    # -- agreement between stages ----------------------------------------------------------------------------------
    def check_matches(self, other: "ImageContract", mine: str, theirs: str, classes: bool = True) -> None:
        """One-line ContractError when ``other`` (``theirs``) disagrees with this one (``mine``) on channels, size
        or (with ``classes``) the class count."""
        for what, a, b in (("channels", self.channels, other.channels),
                           ("image size", (self.height, self.width), (other.height, other.width))):
            if a != b:
                raise ContractError(f"{what} mismatch: {mine} has {_fmt(a)}, {theirs} has {_fmt(b)}")
        if classes and self.num_classes != other.num_classes:
            raise ContractError(f"class-count mismatch: {mine} has {self.num_classes} classes, {theirs} has "
                                f"{other.num_classes}")


def _fmt(v) -> str:
    return f"{v[0]} x {v[1]}" if isinstance(v, tuple) else str(v)


FASHION_MNIST = ImageContract(
    1, 28, 28,
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    (0.2860,), (0.3530,))


def from_checkpoint(ckpt: dict) -> ImageContract:
    """The contract a checkpoint dict was trained on; one without the key is Fashion-MNIST's."""
    d = ckpt.get("contract")
    return FASHION_MNIST if d is None else ImageContract.from_dict(d, "checkpoint contract")


__all__ = ["ImageContract", "ContractError", "FASHION_MNIST", "from_checkpoint", "SIZE_MULTIPLE", "MIN_SIZE"]
