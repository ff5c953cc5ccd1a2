"""Attacks (torchattacks) and adversarial datasets.

All attacks work on N x C x H x W images in [0, 1] (the image contract); the classifier normalises internally (``VGG16.forward``), so no
attack sees normalised pixels. Attacks target whatever ``nn.Module`` they are given: the bare classifier
(oblivious attacker, the paper's setting) or ``Defended(purifier, classifier)``.

| name       | torchattacks class | norm | defaults here |
|------------|--------------------|------|---------------|
| ``fgsm``   | FGSM (Goodfellow et al. 2015) | L-inf | eps |
| ``pgd``    | PGD (Madry et al. 2018), random start | L-inf | eps, alpha 0.01, 40 steps |
| ``tpgd``   | PGD, targeted (the paper's section 2.4): target = random class != label | L-inf | as pgd |
| ``cw``     | CW (Carlini & Wagner 2017) | L2 | c 1, kappa 0, 100 steps, lr 0.01 |

Adversarial dataset format (``save_adversarial`` / ``load_adversarial``): one ``.npz`` file holding
``x_adv`` float32 [N,C,H,W] in [0,1], ``y`` int64 [N] (clean labels), ``index`` int64 [N] (source indices in
the torchvision split), ``target`` int64 [N] (targeted attacks only, else -1) and ``meta``: a JSON string with
attack, eps, alpha, steps, seed, split ("train"/"test"), classifier sha256, and the accuracy of the attacked model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import check_eps
from .errors import VaeganError

ATTACKS = ("fgsm", "pgd", "tpgd", "cw")


@dataclass
class AttackSpec:
    name: str
    eps: float = 0.1
    alpha: float = 0.01
    steps: int = 40
    seed: int = 0
    cw_c: float = 1.0
    cw_lr: float = 0.01
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in ATTACKS:
            raise VaeganError(f"unknown attack {self.name!r} (expected one of {', '.join(ATTACKS)})")
        check_eps(self.eps)
        if self.steps < 1:
            raise VaeganError(f"steps must be >= 1 (got {self.steps})")

    @property
    def tag(self) -> str:
        if self.name == "fgsm":
            return f"fgsm_eps{self.eps:g}"
        if self.name == "cw":
            return f"cw_c{self.cw_c:g}_steps{self.steps}"
        return f"{self.name}{self.steps}_eps{self.eps:g}"


def make_attack(model: nn.Module, spec: AttackSpec):
    import torchattacks

    model.eval()
    if spec.name == "fgsm":
        return torchattacks.FGSM(model, eps=spec.eps)
    if spec.name in ("pgd", "tpgd"):
        atk = torchattacks.PGD(model, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=True)
        if spec.name == "tpgd":
            atk.set_mode_targeted_by_label(quiet=True)
        return atk
    return torchattacks.CW(model, c=spec.cw_c, kappa=0, steps=spec.steps, lr=spec.cw_lr)


def random_targets(y: torch.Tensor, seed: int, num_classes: int) -> torch.Tensor:
    """A random class != y per image (seeded), out of ``num_classes`` (the classifier's output count)."""
    g = torch.Generator().manual_seed(seed + 12345)
    return (y + torch.randint(1, num_classes, y.shape, generator=g).to(y.device)) % num_classes


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, batch_size: int = 250,
               progress: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attack ``model`` on (x, y) in batches; returns (x_adv, targets or None)."""
    from tqdm import tqdm

    atk = make_attack(model, spec)
    if spec.name == "tpgd":
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        targets = random_targets(y, spec.seed, num_classes)
    else:
        targets = None
    torch.manual_seed(spec.seed)  # torchattacks' random start uses the global generator
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc=spec.tag, disable=not progress, leave=False):
        lab = targets[i:i + batch_size] if targets is not None else y[i:i + batch_size]
        out.append(atk(x[i:i + batch_size], lab).detach())
    return torch.cat(out), targets


def save_adversarial(path: str | Path, x_adv: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                     spec: AttackSpec, targets: torch.Tensor | None, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    full_meta = {**asdict(spec), "tag": spec.tag, **meta}
    np.savez_compressed(
        tmp, x_adv=x_adv.numpy().astype(np.float32), y=y.numpy().astype(np.int64), index=index.numpy().astype(np.int64),
        target=(targets if targets is not None else torch.full_like(y, -1)).numpy().astype(np.int64),
        meta=np.array(json.dumps(full_meta)),
    )
    tmp.replace(path)
    return path


def load_adversarial(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VaeganError(f"{path}: adversarial dataset not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in ("x_adv", "y", "index", "target", "meta")}
    except (OSError, ValueError, KeyError) as e:
        raise VaeganError(f"{path}: not a vaegan adversarial dataset ({e})") from None
    d["meta"] = json.loads(str(d["meta"]))
    return d
