"""BPDA (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a false sense of security"): PGD through the
purifier approximated by the identity on the backward pass; ``bpda_eot`` adds EOT over the randomized purifier."""

from __future__ import annotations

import torch
from torch import nn

from .eot import run_eot
from .pgd import run_pgd


class StraightThrough(nn.Module):
    """BPDA (Athalye et al. 2018): the purifier on the forward pass, the identity on the backward pass,
    ``x + (purify(x) - x).detach()``; so d classifier(purifier(x)) / dx = the classifier's gradient at purify(x)."""

    def __init__(self, purifier: nn.Module):
        super().__init__()
        self.purifier = purifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = self.purifier(x.detach())
        return x + (p - x).detach()


def run_bpda(ctx, eps: float):
    return run_pgd(ctx, eps, "bpda", ctx.bpda)


def run_bpda_eot(ctx, eps: float):
    return run_eot(ctx, eps, "bpda_eot", exact=False)
