"""``Context``: what every attack of one evaluation shares (images, nets, the defended models, the batch cache, the
results so far), built once by ``evaluate_adaptive`` and passed to each attack's runner."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .config import AdaptiveConfig
from .registry import attack_budget


@dataclass
class Context:
    cfg: AdaptiveConfig
    x: Any                # (N, C, H, W) images in [0, 1] (the image contract), on the attack device
    y: Any                # (N,) labels
    vg: Any               # the VAE-GAN
    clf: Any              # the classifier
    defended: Any         # classifier(purifier(x)), deterministic: scores everything but the randomized attacks
    bpda: Any             # the same, straight through the purifier on the backward pass
    full: Any             # the same, differentiable through the unrolled purifier
    rcfg: Any             # the randomized purifier's settings (bpda_eot, full_eot)
    rand_eval: Any        # classifier(randomized purifier(x)): scores bpda_eot and full_eot
    cache: Any            # BatchCache
    results: dict = field(default_factory=dict)  # {attack: {str(eps): record}} so far (apgd's "auto" gradient)
    extras: dict = field(default_factory=dict)   # what the report records beside the table (surrogate, runtime)
    state: dict = field(default_factory=dict)    # what an attack's setup prepared for its runs (models, targets)

    @property
    def num_classes(self) -> int:
        """The class count of the image contract (the classifier's outputs); the classifier's own contract when
        there is no purifier (``--no-purifier``)."""
        return (self.vg if self.vg is not None else self.clf).contract.num_classes

    def budget(self, name: str) -> dict:
        return attack_budget(name, asdict(self.cfg))
