"""Self-describing checkpoints (nanoGPT style): one dict that rebuilds the model on its own.

Keys: ``kind`` ("vaegan" | "classifier"), ``format`` (int), ``model`` (state dict), ``model_args`` (dict),
``config`` (the training dataclass as a dict), ``epoch``, ``step``, ``metrics`` (last evaluation),
``best_metric``, and optionally ``optimizer`` (resumable checkpoints only; the shipped weights drop it).
Loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from vaegan.util import file_sha256  # noqa: F401 - defined once in vaegan.util; this name stays importable

from .errors import VaeganError
from .config import ClassifierArgs, VAEGANArgs
from .models import VAEGAN, VGG16

FORMAT = 1
KINDS = {"vaegan": (VAEGAN, VAEGANArgs), "classifier": (VGG16, ClassifierArgs)}


def save(path: str | Path, ckpt: dict) -> None:
    """Write atomically (temp file + rename) so an interrupted run never leaves a half checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **ckpt}, tmp)
    tmp.replace(path)


def load_raw(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VaeganError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VaeganError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt or "model" not in ckpt:
        raise VaeganError(f"{path}: not a vaegan checkpoint (no 'kind'/'model' keys)")
    return ckpt


def load_model(path: str | Path, kind: str) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of ``kind`` from the checkpoint alone; return (model in eval mode, checkpoint dict)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    ckpt = load_raw(path)
    if ckpt["kind"] != kind:
        raise VaeganError(f"{path}: is a {ckpt['kind']} checkpoint, expected a {kind} checkpoint")
    cls, args_cls = KINDS[kind]
    model = cls(args_cls(**ckpt["model_args"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise VaeganError(f"{path}: weights do not match the {kind} architecture ({str(e).splitlines()[0]})") from None
    return model.eval(), ckpt


def slim(ckpt: dict) -> dict:
    """The shippable copy: everything but the optimizer state."""
    return {k: v for k, v in ckpt.items() if k != "optimizer"}




def default_path(kind: str) -> Path:
    """Where the shipped weights of ``kind`` live: ``models/{kind}.pt`` in a checkout, ``vaegan/models`` when
    installed from a wheel (the folder is the package ``vaegan.models`` either way)."""
    from importlib.resources import files

    return Path(str(files("vaegan.models").joinpath(f"{kind}.pt")))
