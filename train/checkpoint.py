"""Self-describing checkpoints (nanoGPT style): one dict that rebuilds the model on its own.

Keys: ``kind`` ("vaegan" | "classifier"), ``format`` (int), ``model`` (state dict), ``model_args`` (dict),
``config`` (the training dataclass as a dict), ``epoch``, ``step``, ``metrics`` (last evaluation),
``best_metric``, ``contract`` (the image contract, ``ImageContract.to_dict``; a checkpoint without it is
Fashion-MNIST's), for a purifier ``purify`` (its operating point, ``PurifyConfig`` as a dict: the defaults of eval,
the adaptive attacks and export), and optionally ``optimizer`` (resumable checkpoints only; the shipped weights drop
it). Loaded with ``torch.load(..., weights_only=True)``.

A classifier may also be the user's own model saved as a ``torch.export`` program (``.pt2``, exported in eval mode
with a dynamic batch dimension; it takes the contract's [0, 1] images and returns logits): ``load_model(path,
"classifier")`` accepts it wherever a classifier checkpoint is accepted.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from vaegan.runtime.contract import ContractError, ImageContract, from_checkpoint
from vaegan.util import file_sha256  # noqa: F401 - defined once in vaegan.util; this name stays importable

from .errors import VaeganError
from .config import ClassifierArgs, PurifyConfig, VAEGANArgs
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


DYNAMIC_BATCH_HINT = ('export it with a dynamic batch: torch.export.save(torch.export.export(model.eval(), (x,), '
                      'dynamic_shapes={"x": {0: torch.export.Dim("batch")}}), "classifier.pt2")')


class ExportedClassifier(torch.nn.Module):
    """A ``torch.export`` program as a frozen classifier module. Exported programs refuse ``train()`` / ``eval()``
    (torch.export); this wrapper keeps the program out of its children so the callers' ``eval()`` calls stay
    harmless, and moves it with ``.to(device)``. ``contract`` holds what the program itself fixes: channels, size,
    class count (names and normalisation come from the data / purifier)."""

    def __init__(self, program_module: torch.nn.Module, contract: ImageContract):
        super().__init__()
        self._program = [program_module]
        for p in program_module.parameters():
            p.requires_grad_(False)
        self.contract = contract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._program[0](x)

    def _apply(self, fn, *args, **kwargs):
        self._program[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)


def _load_exported(path: Path) -> tuple[torch.nn.Module, dict]:
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch.export.load raises many kinds (zip, pickle, version) on a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VaeganError(f"{path}: not a readable torch.export program ({first})") from None
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    if len(inputs) != 1:
        raise VaeganError(f"{path}: the exported classifier takes {len(inputs)} inputs (expected one image batch)")
    shape = tuple(inputs[0].meta["val"].shape)
    out = next(n for n in ep.graph.nodes if n.op == "output").args[0]
    out = out[0] if isinstance(out, (tuple, list)) else out
    oshape = tuple(out.meta["val"].shape) if hasattr(out, "meta") and "val" in out.meta else ()
    if len(shape) != 4 or len(oshape) != 2:
        raise VaeganError(f"{path}: the exported classifier maps {list(shape)} -> {list(oshape)} (expected "
                          f"N x C x H x W images -> N x classes logits)")
    if isinstance(shape[0], int):
        raise VaeganError(f"{path}: exported with a static batch size {shape[0]}; {DYNAMIC_BATCH_HINT}")
    c, h, w, k = int(shape[1]), int(shape[2]), int(shape[3]), int(oshape[1])
    try:
        contract = ImageContract(c, h, w, tuple(str(i) for i in range(k)), (0.0,) * c, (1.0,) * c)
    except ContractError as e:
        raise VaeganError(f"{path}: {e}") from None
    return (ExportedClassifier(ep.module(), contract),
            {"kind": "classifier", "format": "torch.export", "contract": contract.to_dict(), "model_args": {}})


def load_model(path: str | Path, kind: str) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of ``kind`` from the checkpoint alone; return (model in eval mode, checkpoint dict). The
    model's ``contract`` is the checkpoint's image contract. A classifier may be a ``.pt2`` program (see above)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    if kind == "classifier" and Path(path).suffix == ".pt2":
        if not Path(path).is_file():
            raise VaeganError(f"{path}: classifier program not found")
        return _load_exported(Path(path))
    ckpt = load_raw(path)
    if ckpt["kind"] != kind:
        raise VaeganError(f"{path}: is a {ckpt['kind']} checkpoint, expected a {kind} checkpoint")
    cls, args_cls = KINDS[kind]
    try:
        model = cls(args_cls(**ckpt["model_args"]), from_checkpoint(ckpt))
    except ContractError as e:
        raise VaeganError(f"{path}: {e}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise VaeganError(f"{path}: weights do not match the {kind} architecture ({str(e).splitlines()[0]})") from None
    return model.eval(), ckpt


def check_pair(vg: torch.nn.Module, clf: torch.nn.Module, vaegan_path, classifier_path) -> None:
    """The purifier and the classifier agree on channels, size and class count (one-line VaeganError naming both)."""
    try:
        vg.contract.check_matches(clf.contract, f"purifier {vaegan_path}", f"classifier {classifier_path}")
    except ContractError as e:
        raise VaeganError(str(e)) from None


def check_data(contract: ImageContract, data_contract: ImageContract, model_path, data_name: str) -> None:
    """A model and the data it is used on agree (one-line VaeganError naming both)."""
    try:
        contract.check_matches(data_contract, f"{model_path}", f"data set {data_name}")
    except ContractError as e:
        raise VaeganError(str(e)) from None


def purify_config(ckpt: dict, **overrides) -> PurifyConfig:
    """The purifier's operating point stored in its checkpoint (``purify``; else ``PurifyConfig()``'s defaults),
    with ``overrides`` (options the user gave; None = keep) applied."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(PurifyConfig)}
    base = {k: v for k, v in (ckpt.get("purify") or {}).items() if k in known}
    base.update({k: v for k, v in overrides.items() if v is not None and k in known})
    return PurifyConfig(**base)


def slim(ckpt: dict) -> dict:
    """The shippable copy: everything but the optimizer state."""
    return {k: v for k, v in ckpt.items() if k != "optimizer"}




def default_path(kind: str) -> Path:
    """Where the shipped weights of ``kind`` live: ``models/{kind}.pt`` in a checkout, ``vaegan/models`` when
    installed from a wheel (the folder is the package ``vaegan.models`` either way)."""
    from importlib.resources import files

    return Path(str(files("vaegan.models").joinpath(f"{kind}.pt")))
