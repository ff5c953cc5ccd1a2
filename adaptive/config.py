"""``AdaptiveConfig``: every setting of an adaptive evaluation; ``vaegan-eval-adaptive``'s options are generated from
it (``metadata``: the option's name where it differs from the field's, its help and choices). No torch import."""

from __future__ import annotations

from dataclasses import dataclass, field

from vaegan.train.config import PurifyConfig, check_eps, resolve_device
from vaegan.train.errors import VaeganError

from .registry import ATTACKS, DEFAULT_ATTACKS, WITHOUT_PURIFIER

LOSSES = ("ce", "margin")
APGD_GRADIENTS = ("auto", "bpda", "full")
# images per clean-accuracy scoring call (the randomized purifier draws noise per call: the batch is part of the result)
SCORE_BATCH = 250


def _opt(help: str, option: str | None = None, choices: tuple | None = None) -> dict:
    return {"help": help, **({"option": option} if option else {}), **({"choices": choices} if choices else {})}


@dataclass
class AdaptiveConfig:
    n: int = field(default=1000, metadata=_opt("first N test images (a fixed subset)"))
    eps: tuple[float, ...] = field(default=(0.05, 0.1, 0.2, 0.3), metadata=_opt("L-inf budgets, comma-separated"))
    attacks: tuple[str, ...] = field(default=DEFAULT_ATTACKS, metadata=_opt(
        f"comma-separated, of {', '.join(ATTACKS)}"))
    steps: int = field(default=100, metadata=_opt(
        "PGD / APGD / FAB iterations (bpda, bpda_eot, full, full_eot, transfer, latent, apgd, fab)", "--attack-steps"))
    checkpoints: tuple[int, ...] = field(default=(10, 20, 50, 100), metadata=_opt(
        "convergence check: accuracy after these steps (<= attack steps)", "--curve"))
    alpha_ratio: float = field(default=0.1, metadata=_opt("PGD step = ratio x eps"))
    restarts: int = field(default=1, metadata=_opt(
        "PGD random restarts (per-image worst case over restarts)", "--attack-restarts"))
    loss: str = field(default="ce", metadata=_opt("PGD loss: cross-entropy or CW margin", choices=LOSSES))
    eot_samples: int = field(default=20, metadata=_opt(
        "draws of the randomized purifier per gradient (bpda_eot, full_eot)"))
    eot_restarts: int = field(default=4, metadata=_opt(
        "R of the randomized purifier they attack (fresh noise per draw)"))
    apgd_grad: str = field(default="auto", metadata=_opt(
        "apgd / fab gradient: bpda, full, or auto (the one with the lower accuracy at that eps)",
        choices=APGD_GRADIENTS))
    apgd_targets: int = field(default=9, metadata=_opt("APGD-T target classes (AutoAttack: 9)"))
    fab_targets: int = field(default=9, metadata=_opt("FAB-T target classes (AutoAttack: 9)"))
    square_queries: int = field(default=1000, metadata=_opt("Square queries per image (AutoAttack standard: 5000)"))
    artifacts: str | None = field(default=None, metadata=_opt(
        "exported artifacts for square (default: export to OUT/artifacts)"))
    surrogate: str | None = field(default=None, metadata=_opt(
        "surrogate classifier for transfer (default: train one in OUT/surrogate)"))
    surrogate_epochs: int = field(default=2, metadata=_opt("epochs of the surrogate trained for transfer"))
    surrogate_train_limit: int | None = field(default=None, metadata=_opt(
        "training images of that surrogate (default: all)"))
    surrogate_width_div: int = field(default=8, metadata=_opt("width divisor of that surrogate's VGG16"))
    latent_pool: int = field(default=2000, metadata=_opt(
        "latent: x_target is the first image of the target class among the first K test images"))
    seed: int = field(default=0, metadata=_opt("seed of the attacks' random starts and targets", "--attack-seed"))
    batch_size: int = field(default=100, metadata=_opt("images per attack batch (and per resumable partial file)"))
    threads: int | None = field(default=None, metadata=_opt("torch intra-op threads (default: torch's)"))
    device: str = field(default="cpu", metadata=_opt(
        "torch device of the attacks: cpu, cuda, cuda:N (square always queries the CPU runtime)"))
    purifier: bool = field(default=True, metadata=_opt(
        "--no-purifier: attack the classifier alone (the baseline without a purifier; --checkpoint is then not read)",
        "--purifier"))
    purify: PurifyConfig = field(default_factory=PurifyConfig)
    out: str = field(default="reports", metadata=_opt("output folder"))
    data_root: str | None = field(default=None, metadata=_opt("Fashion-MNIST root (default: $VAEGAN_DATA, else the system's copy)"))
    dataset: str = field(default="fashion-mnist", metadata=_opt(
        "fashion-mnist, mnist, cifar10, svhn, or a folder PATH with train/<class>/* and test/<class>/*"))
    image_size: int | None = field(default=None, metadata=_opt("resize every image to S x S (default: the set's own)"))
    channels: int | None = field(default=None, metadata=_opt("convert to 1 or 3 channels (default: the set's own)"))
    download: bool = field(default=False, metadata=_opt("let torchvision download a missing data set"))

    def __post_init__(self):
        self.eps = tuple(float(e) for e in self.eps)
        self.attacks = tuple(self.attacks)
        self.checkpoints = tuple(int(c) for c in self.checkpoints)
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise VaeganError(f"unknown adaptive attack {bad[0]!r} (expected one of {', '.join(ATTACKS)})")
        if not self.attacks:
            raise VaeganError("no attack selected")
        if not self.purifier and any(a not in WITHOUT_PURIFIER for a in self.attacks):
            bad = [a for a in self.attacks if a not in WITHOUT_PURIFIER]
            raise VaeganError(f"--no-purifier: {', '.join(bad)} attack{'s' * (len(bad) == 1)} the purifier; choose "
                              f"--attacks from {', '.join(WITHOUT_PURIFIER)}")
        for e in self.eps:
            check_eps(e)
        if self.n < 1 or self.steps < 1 or self.restarts < 1 or self.eot_samples < 1 or self.batch_size < 1:
            raise VaeganError(f"n, steps, restarts, eot-samples and batch-size must be >= 1 (got n={self.n}, "
                              f"steps={self.steps}, restarts={self.restarts}, eot_samples={self.eot_samples}, "
                              f"batch_size={self.batch_size})")
        if self.eot_restarts < 2:
            raise VaeganError(f"eot-restarts must be >= 2 (the randomness of the purifier; got {self.eot_restarts})")
        if self.loss not in LOSSES:
            raise VaeganError(f"unknown loss {self.loss!r} (expected one of {', '.join(LOSSES)})")
        if self.apgd_grad not in APGD_GRADIENTS:
            raise VaeganError(f"unknown apgd gradient {self.apgd_grad!r} (expected auto, bpda or full)")
        if not 0 < self.alpha_ratio <= 1:
            raise VaeganError(f"alpha-ratio must be in (0, 1] (got {self.alpha_ratio})")
        for flag, v in (("apgd-targets", self.apgd_targets), ("fab-targets", self.fab_targets)):
            if v < 1:
                raise VaeganError(f"{flag} must be >= 1 (got {v}; at most the class count - 1 are used)")
        resolve_device(self.device)
        try:
            from vaegan.train.purifier import check_config  # torch: only when a config is built

            check_config(self.purify)
        except ValueError as e:
            raise VaeganError(str(e)) from None
